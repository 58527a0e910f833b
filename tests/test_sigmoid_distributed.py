"""``sigmoid_loss`` across JAX devices: ``gather=all_gather(axis)`` with each exchange, under
``jax.shard_map`` + ``jax.jit`` on 4 virtual CPU devices, equals the loss of the concatenated
batch (values and gradients of query, key, temperature and bias); the ring's program passes
the keys by ``ppermute`` and never all-gathers them. (torch: ``test_peers_distributed.py``
runs both exchanges under gloo against open_clip's ``SigLipLoss``.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _subprocess import run_python

WORKER = Path(__file__).resolve().parent / "_sigmoid_jax_worker.py"

pytestmark = pytest.mark.backends("jax")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("jax")
    out = tmp_path_factory.mktemp("sigmoid-jax") / "report.json"
    run_python([str(WORKER), "4", str(out)], timeout=300)
    return json.loads(out.read_text())


@pytest.mark.parametrize("exchange", ["gather", "ring"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_four_devices_equal_one(report, exchange, chunk):
    result = report[f"{exchange}, {chunk}"]
    for what in ("loss", "query", "key", "t", "bias"):
        assert result[what] <= 1e-12, (what, result[what])
    if exchange == "ring":
        assert result["ppermute"] and not result["all_gather"], result
    else:
        assert result["all_gather"], result
