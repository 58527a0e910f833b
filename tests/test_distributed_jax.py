"""``gather=all_gather(axis)`` in JAX: 2 and 4 virtual CPU devices equal one process.

The cases of ``_distributed_cases.py`` run under ``jax.shard_map`` + ``jax.jit`` (and
``jax.pmap``) in ``_distributed_jax_worker.py``, in a subprocess because ``XLA_FLAGS`` must be
set before JAX is imported (and with a timeout, so that a hang fails the test instead of CI);
each is compared with the seed (``info-nce-pytorch``, float64 torch autograd) on the
concatenated batch, as ``_distributed_cases.py`` says the numbers must relate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import infonce_xp
from _distributed_cases import (
    CASES,
    INPUTS,
    JAX_WORLDS,
    LOCAL,
    compare,
    key,
    reference,
    write_inputs,
)
from _subprocess import run_python

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_distributed_jax_worker.py"
EXAMPLES = HERE.parent / "examples"
JAX_CASES = [(name, p) for name, case in CASES.items() for p in case.jax]

pytestmark = pytest.mark.backends("jax")


@pytest.fixture(scope="module")
def inputs_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    directory = tmp_path_factory.mktemp("distributed-jax")
    return directory, write_inputs(directory)


@pytest.fixture(scope="module")
def jax_run(inputs_dir: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    directory = inputs_dir[0]
    run_python(
        [str(WORKER), "cases", str(directory)],
        timeout=240,
        OMP_NUM_THREADS="1",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
    )
    with np.load(directory / "jax.npz") as data:
        results = {k: data[k] for k in data.files}
    return results, json.loads((directory / "jax-errors.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("world", JAX_WORLDS, ids=lambda w: f"{w}devices")
@pytest.mark.parametrize(("name", "pattern"), JAX_CASES, ids=[f"{n}-{p}" for n, p in JAX_CASES])
def test_jax_matches_single_process(
    jax_run: Any, inputs_dir: Any, world: int, name: str, pattern: str
) -> None:
    """``reduced``: grad of the devices' mean loss under shard_map(check_vma=True) is the
    single-process gradient; ``local*``/``pmap``: grad of each device's own loss is W times it."""
    results, errors = jax_run
    _, inputs = inputs_dir
    case, k = CASES[name], key(world, name)
    prefix = f"{k}/{pattern}"
    if prefix in errors:
        pytest.fail(f"JAX worker failed for {prefix}:\n{errors[prefix]}")
    got = {
        f: results[f"{prefix}/{f}"]
        for f in (*INPUTS, "loss", "temperature")
        if f"{prefix}/{f}" in results
    }
    scale = world if (pattern in LOCAL and case.reduction == "mean") else 1
    compare(case, got, reference(case, inputs, k), scale)


def test_jax_gather_outside_mapped_context() -> None:
    import jax
    import jax.numpy as jnp

    from infonce_xp.jax import AllGather, all_gather

    gather = all_gather("batch")
    assert gather == AllGather("batch")
    q, k = jnp.ones((2, 4, 8))
    with pytest.raises(ValueError, match="shard_map"):
        infonce_xp.info_nce(q, k, gather=gather)
    with pytest.raises(ValueError, match="shard_map"):
        jax.jit(lambda q, k: infonce_xp.info_nce(q, k, gather=gather))(q, k)
    with pytest.raises(ValueError, match="shard_map"):
        jax.grad(lambda q: infonce_xp.info_nce(q, k, gather=gather))(q)
    with pytest.raises(ValueError, match="shard_map"):
        gather.rank()

    # A mapped axis exists, but not the one named.
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.asarray(jax.devices()[:1]), ("devices",))
    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:  # JAX < 0.7
        from jax.experimental.shard_map import shard_map
    mapped = shard_map(
        lambda q, k: infonce_xp.info_nce(q, k, gather=gather)[None],
        mesh=mesh,
        in_specs=(P("devices"), P("devices")),
        out_specs=P("devices"),
    )
    with pytest.raises(ValueError, match="'batch'"):
        mapped(q, k)


def test_jax_per_device_loss_without_gather() -> None:
    """Under shard_map(check_vma=True), a local loss with a replicated temperature and tiles."""
    output = run_python(
        [str(WORKER), "per-device-loss"],
        timeout=120,
        OMP_NUM_THREADS="1",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    assert output.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_jax_shard_map_example_runs() -> None:
    output = run_python(
        [str(EXAMPLES / "jax_shard_map_step.py")],
        timeout=120,
        OMP_NUM_THREADS="1",
        JAX_PLATFORMS="cpu",
    )
    assert "loss" in output.stdout
