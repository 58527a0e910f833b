"""The peers' distributed flags under gloo: each rank's loss and gradients equal the peer's own
code on that rank (sentence-transformers' ``gather_across_devices``, lightly's
``gather_distributed`` in its port, ``GatherLayer`` included), 2 and 3 processes, each rank
with different data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _peers_gloo_worker import SIGLIP_IMPLS
from _subprocess import free_port, run_python
from reference_sigmoid import open_clip_loss_module

WORKER = Path(__file__).resolve().parent / "_peers_gloo_worker.py"
CASES = (
    "st.MNRL",
    "st.MNRL(symmetric)",
    "st.MNRL(GTE, hardness)",
    "st.GISTEmbedLoss",
    "lightly.NTXentLoss",
    "lightly.DCLWLoss",
    *(f"open_clip.ClipLoss({a}, {b})" for a in (True, False) for b in (True, False)),
)
SIGLIP = (
    *(f"open_clip.SigLipLoss({impl})" for impl in SIGLIP_IMPLS),
    *(
        f"sigmoid_loss({exchange}, {chunk}) = SigLipLoss({impl})"
        for impl in SIGLIP_IMPLS
        for exchange in ("gather", "ring")
        for chunk in (None, 2)
    ),
    "sigmoid_loss(ring) never gathers",
)

pytestmark = pytest.mark.backends("torch")


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"{w}procs")
def reports(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list:
    torch = pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers", reason="the ST peer")
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this torch build has no gloo backend")
    world, directory = request.param, tmp_path_factory.mktemp("peers-gloo")
    for attempt in range(2):
        try:
            run_python(
                [str(WORKER), str(world), str(free_port()), str(directory)],
                timeout=150,
                OMP_NUM_THREADS="1",
            )
            break
        except pytest.fail.Exception as err:  # a port taken meanwhile: retry once
            if attempt or "address already in use" not in str(err).lower():
                raise
    return [json.loads((directory / f"peers-rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("name", CASES + SIGLIP)
def test_each_rank_is_the_peer(reports, name):
    if name in SIGLIP and open_clip_loss_module() is None:
        pytest.skip("open_clip's loss.py is not installed (pip install --no-deps open-clip-torch)")
    values = []
    for rank, report in enumerate(reports):
        result = report[name]
        assert "error" not in result, f"rank {rank}: {result.get('error')}"
        for what, difference in result.items():
            if what != "value":
                assert difference <= 1e-10, f"rank {rank}, {what}: {difference}"
        values.append(result["value"])
    if "local_loss=False" not in name and not name.startswith("open_clip.ClipLoss(False"):
        assert len(set(values)) == len(values), "every rank has its own data, so its own loss"
