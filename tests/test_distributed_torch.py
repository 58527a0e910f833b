"""``gather=all_gather`` on ``torch.distributed``: 2 and 3 gloo processes equal one process.

The workers (``_distributed_torch_worker.py``, spawned in a subprocess with a timeout, so that
a hung collective fails the test instead of CI) run every case of ``_distributed_cases.py`` on
localhost; each case is compared with the seed (``info-nce-pytorch``, float64 torch autograd) on
the concatenated batch, as ``_distributed_cases.py`` says the numbers must relate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import infonce_xp
from _distributed_cases import CASES, INPUTS, TORCH_WORLDS, compare, key, reference, write_inputs
from _subprocess import free_port, run_python

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_distributed_torch_worker.py"
EXAMPLES = HERE.parent / "examples"

pytestmark = pytest.mark.backends("torch")


@pytest.fixture(scope="module", autouse=True)
def torch_distributed() -> None:
    import torch

    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")


@pytest.fixture(scope="module")
def inputs_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    directory = tmp_path_factory.mktemp("distributed-torch")
    return directory, write_inputs(directory)


@pytest.fixture(scope="module", params=TORCH_WORLDS, ids=lambda w: f"{w}procs")
def torch_run(
    request: pytest.FixtureRequest, inputs_dir: Any
) -> tuple[int, list[dict[str, Any]], list[dict[str, str]]]:
    """Spawn W gloo processes once per world size; their per-rank results and errors."""
    world = request.param
    directory = inputs_dir[0]
    for attempt in range(2):
        try:
            run_python(
                [str(WORKER), str(world), str(free_port()), str(directory)],
                timeout=150,
                OMP_NUM_THREADS="1",
            )
            break
        except pytest.fail.Exception as err:
            # a port taken between free_port() and the bind: retry once
            if attempt or "address already in use" not in str(err).lower():
                raise
    ranks, errors = [], []
    for rank in range(world):
        with np.load(directory / f"torch-{world}-rank{rank}.npz") as data:
            ranks.append({k: data[k] for k in data.files})
        errors.append(json.loads((directory / f"torch-{world}-rank{rank}-errors.json").read_text()))
    return world, ranks, errors


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_torch_matches_single_process(torch_run: Any, inputs_dir: Any, name: str) -> None:
    world, ranks, errors = torch_run
    _, inputs = inputs_dir
    case, k = CASES[name], key(world, name)
    failures = [f"rank {rank}:\n{e[k]}" for rank, e in enumerate(errors) if k in e]
    if failures:
        pytest.fail(f"torch worker failed for {k}:\n" + "\n".join(failures))
    want = reference(case, inputs, k)
    per_rank = [
        {
            f: r[f"{k}/{f}"]
            for f in (*INPUTS, "loss", "temperature", "log_inverse_temperature")
            if f"{k}/{f}" in r
        }
        for r in ranks
    ]
    scale = world if case.reduction == "mean" else 1
    got: dict[str, Any] = {}
    for field in per_rank[0]:
        parts = [r[field] for r in per_rank]
        if field in ("temperature", "log_inverse_temperature"):
            got[field] = np.sum(parts)  # all-reduce; DDP then divides by W (scale)
        elif field == "loss":
            got[field] = np.concatenate(parts) if case.reduction == "none" else np.stack(parts)
        else:
            got[field] = np.concatenate(parts)
    compare(case, got, want, scale)


@pytest.mark.slow
def test_torch_rank_and_unequal_batches(torch_run: Any) -> None:
    """``all_gather.rank()`` is the process rank; unequal local batch sizes raise ValueError on
    every worker (no hang)."""
    world, ranks, errors = torch_run
    assert [int(r["rank"]) for r in ranks] == list(range(world))
    for rank, e in enumerate(errors):
        message = e["unequal_batch"]
        assert message.startswith("ValueError"), f"rank {rank}: {message}"
        assert "same local batch size" in message and str([4 + r for r in range(world)]) in message


def test_torch_all_gather_needs_process_group() -> None:
    import torch
    import torch.distributed as dist

    from infonce_xp.torch import AllGather, InfoNCE, all_gather

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    q, k = torch.randn(2, 4, 8)
    for call in (
        lambda: infonce_xp.info_nce(q, k, gather=all_gather),
        lambda: InfoNCE(gather=all_gather)(q, k),
        lambda: infonce_xp.info_nce_value_and_grad(q, k, gather=AllGather()),
        lambda: all_gather(q),
        lambda: all_gather.rank(),
    ):
        with pytest.raises(RuntimeError, match="init_process_group"):
            call()
    assert repr(all_gather) == "all_gather"
    assert InfoNCE(gather=all_gather).gather is all_gather


@pytest.mark.slow
def test_ddp_example_runs() -> None:
    output = run_python([str(EXAMPLES / "ddp_step.py")], timeout=120, OMP_NUM_THREADS="1")
    assert "loss" in output.stdout
