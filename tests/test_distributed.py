"""``gather=``: the loss over several workers equals the single-process loss on the whole batch.

torch: 2 and 3 processes on gloo (localhost), spawned by ``_distributed_worker.py`` in a
subprocess. JAX: 2 and 4 virtual CPU devices under ``jax.shard_map`` + ``jax.jit`` (and
``jax.pmap``), in a subprocess because ``XLA_FLAGS`` must be set before JAX is imported. Both
are compared with the seed (``info-nce-pytorch``, float64 torch autograd) on the concatenated
batch. Each subprocess has a timeout, so a hung collective fails the test instead of CI.

How the numbers must relate, with W workers (the contract of ``gather``):

- loss: the mean of the workers' losses ("mean"), their sum ("sum") or their rows one after
  the other ("none") is the single-process loss;
- input gradients: each worker's gradient of its own loss, divided by W as DDP averages it
  (by 1 for "sum"/"none", whose single-process objective is the plain sum over workers), is the
  single-process gradient of its rows; paired negatives stay local;
- a learned temperature: the workers' gradients, summed and divided the same way (DDP's
  average for "mean"), are the single-process gradient.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import infonce_xp

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_distributed_worker.py"
EXAMPLES = HERE.parent / "examples"
SRC = Path(infonce_xp.__file__).resolve().parent.parent  # the infonce_xp under test, for children

ROWS, DIM, UNPAIRED, PAIRED = 5, 8, 3, 4  # per worker: queries, features, negatives
TEMPERATURE = 0.07
INPUTS = ("query", "positive_key", "negative_keys")
TORCH_WORLDS, JAX_WORLDS = (2, 3), (2, 4)
LOCAL = ("local", "local-novma", "pmap")  # JAX patterns that differentiate each device's own loss


def case(
    negatives: str | None = None,
    *,
    symmetric: bool = False,
    chunk_size: int | None = None,
    learn: bool = False,
    reduction: str = "mean",
    api: str = "function",
    jax: tuple[str, ...] = ("reduced",),
) -> dict[str, Any]:
    return {
        "negatives": negatives,
        "symmetric": symmetric,
        "chunk_size": chunk_size,
        "learn": learn,
        "reduction": reduction,
        "api": api,
        "jax_patterns": list(jax),
    }


# chunk_size 2 or 3 with 5 rows per worker: blocks straddle the workers' boundaries, the last
# block is padded, and a worker's positives start inside a block.
CASES = {
    "in-batch": case(jax=("reduced", "local", "local-novma", "pmap")),
    "in-batch-none": case(reduction="none", jax=("reduced", "local")),
    "in-batch-sum": case(reduction="sum", learn=True),
    "unpaired": case("unpaired", jax=()),  # JAX: see the learned variants
    "paired": case("paired", jax=()),
    "symmetric": case(symmetric=True, jax=("reduced", "pmap")),
    "learned": case(learn=True, jax=("reduced", "local", "local-novma", "pmap")),
    "unpaired-learned": case("unpaired", learn=True),
    "paired-learned": case("paired", learn=True),
    "symmetric-learned": case(symmetric=True, learn=True, jax=("reduced", "local-novma")),
    "chunked": case(chunk_size=3, learn=True),
    "chunked-symmetric": case(
        symmetric=True, chunk_size=3, learn=True, jax=("reduced", "local-novma")
    ),
    "chunked-unpaired": case("unpaired", chunk_size=2, learn=True),
    "chunked-paired": case("paired", chunk_size=2, learn=True),
    "chunked-none": case(symmetric=True, chunk_size=3, reduction="none", learn=True),
    "class": case(symmetric=True, learn=True, api="class"),
    "value-and-grad": case(
        "unpaired", learn=True, api="value_and_grad", jax=("local", "local-novma")
    ),
    "value-and-grad-symmetric": case(
        symmetric=True, chunk_size=3, api="value_and_grad", jax=("local",)
    ),
    "module": case(symmetric=True, api="module", jax=()),
}
TORCH_CASES = list(CASES)
JAX_CASES = [(name, p) for name, c in CASES.items() for p in c["jax_patterns"]]


def key(world: int, name: str) -> str:
    return f"{world}/{name}"


def make_inputs() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every case for every world size: the whole batch, float64, of W * ROWS queries."""
    rng = np.random.default_rng(20240607)
    cases, inputs = {}, {}
    for world in sorted({*TORCH_WORLDS, *JAX_WORLDS}):
        n = world * ROWS
        for name, c in CASES.items():
            k = key(world, name)
            backends = [
                b for b, ws in (("torch", TORCH_WORLDS), ("jax", JAX_WORLDS)) if world in ws
            ]
            cases[k] = {**c, "world": world, "backends": backends}
            query = inputs[f"{k}/query"] = rng.normal(size=(n, DIM))
            # keys correlated with their queries, so that the loss is not flat
            inputs[f"{k}/positive_key"] = query + 0.5 * rng.normal(size=(n, DIM))
            if c["negatives"] == "unpaired":
                inputs[f"{k}/negative_keys"] = rng.normal(size=(world * UNPAIRED, DIM))
            elif c["negatives"] == "paired":
                inputs[f"{k}/negative_keys"] = rng.normal(size=(n, PAIRED, DIM))
            if c["reduction"] == "none":
                inputs[f"{k}/grad_output"] = rng.uniform(0.5, 1.5, size=n)
            inputs[f"{k}/temperature"] = np.asarray(TEMPERATURE)
    return cases, inputs


def reference(c: dict[str, Any], inputs: dict[str, np.ndarray], k: str) -> dict[str, np.ndarray]:
    """The seed (info-nce-pytorch) on the whole batch: loss and float64 autograd gradients."""
    torch = pytest.importorskip("torch")
    seed = pytest.importorskip("info_nce").info_nce

    tensors = {
        n: torch.tensor(inputs[f"{k}/{n}"], requires_grad=True)
        for n in INPUTS
        if f"{k}/{n}" in inputs
    }
    leaf = None
    temperature: Any = TEMPERATURE
    if c["api"] == "module":
        # the module's parameter is float32 (torch's default), then .double() in the worker
        leaf = torch.tensor(math.log(1 / TEMPERATURE)).double().requires_grad_()
        temperature = torch.exp(-leaf)
    elif c["learn"]:
        leaf = temperature = torch.tensor(TEMPERATURE, dtype=torch.float64, requires_grad=True)
    q, p, neg = tensors["query"], tensors["positive_key"], tensors.get("negative_keys")
    options = {"temperature": temperature, "reduction": c["reduction"]}
    if c["symmetric"]:
        loss = (seed(q, p, **options) + seed(p, q, **options)) / 2
    else:
        loss = seed(q, p, neg, negative_mode=c["negatives"] or "unpaired", **options)
    grad_output = inputs.get(f"{k}/grad_output")
    (loss * (1.0 if grad_output is None else torch.tensor(grad_output))).sum().backward()
    out = {"loss": loss.detach().numpy()}
    out.update({n: t.grad.numpy() for n, t in tensors.items()})
    if leaf is not None:
        out["log_inverse_temperature" if c["api"] == "module" else "temperature"] = (
            leaf.grad.numpy()
        )
    return out


def compare(
    c: dict[str, Any], got: dict[str, Any], want: dict[str, np.ndarray], scale: float
) -> None:
    """``got``: the workers' losses (stacked or concatenated), the concatenated input gradients and
    the summed temperature gradient; ``scale``: what the gradients are divided by."""
    tol = {"rtol": 1e-9, "atol": 1e-11}
    reduce = {"mean": np.mean, "sum": np.sum, "none": np.asarray}[c["reduction"]]
    np.testing.assert_allclose(reduce(got["loss"]), want["loss"], **tol, err_msg="loss")
    for name, expected in want.items():
        if name != "loss":
            assert name in got, f"no gradient for {name}"
            np.testing.assert_allclose(
                got[name] / scale, expected, **tol, err_msg=f"gradient of {name}"
            )


def selected(request: pytest.FixtureRequest, backend: str) -> None:
    chosen = request.config.getoption("--backend")
    if chosen not in ("all", backend):
        pytest.skip(
            f"distributed {backend} tests run with --backend={backend} or all, not {chosen}"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_python(args: list[str], timeout: float, **env: str) -> str:
    """Run ``python ARGS`` in a new session; kill the whole session on timeout, fail on error."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environ,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"`python {' '.join(args)}` timed out after {timeout} s:\n{output[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"`python {' '.join(args)}` exited with {proc.returncode}:\n{output[-6000:]}")
    return output


@pytest.fixture(scope="module")
def workdir(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, Any], dict[str, np.ndarray]]:
    directory = tmp_path_factory.mktemp("distributed")
    cases, inputs = make_inputs()
    (directory / "cases.json").write_text(json.dumps(cases))
    np.savez(directory / "inputs.npz", **inputs)
    return directory, cases, inputs


# --------------------------------------------------------------------------------------- torch


def needs_torch_distributed(request: pytest.FixtureRequest) -> None:
    selected(request, "torch")
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")


@pytest.fixture(scope="module", params=TORCH_WORLDS, ids=lambda w: f"{w}procs")
def torch_run(
    request: pytest.FixtureRequest, workdir: Any
) -> tuple[int, list[dict[str, Any]], list[dict[str, str]]]:
    """Spawn W gloo processes once per world size; their per-rank results and errors."""
    needs_torch_distributed(request)
    world = request.param
    directory = workdir[0]
    for attempt in range(2):
        try:
            run_python(
                [str(WORKER), "torch", str(world), str(free_port()), str(directory)], timeout=150
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
@pytest.mark.parametrize("name", TORCH_CASES)
def test_torch_matches_single_process(torch_run: Any, workdir: Any, name: str) -> None:
    world, ranks, errors = torch_run
    _, cases, inputs = workdir
    c, k = cases[key(world, name)], key(world, name)
    failures = [f"rank {rank}:\n{e[k]}" for rank, e in enumerate(errors) if k in e]
    if failures:
        pytest.fail(f"torch worker failed for {k}:\n" + "\n".join(failures))
    want = reference(c, inputs, k)
    per_rank = [
        {
            f: r[f"{k}/{f}"]
            for f in (*INPUTS, "loss", "temperature", "log_inverse_temperature")
            if f"{k}/{f}" in r
        }
        for r in ranks
    ]
    scale = world if c["reduction"] == "mean" else 1
    got: dict[str, Any] = {}
    for field in per_rank[0]:
        parts = [r[field] for r in per_rank]
        if field in ("temperature", "log_inverse_temperature"):
            got[field] = np.sum(parts)  # all-reduce; DDP then divides by W (scale)
        elif field == "loss":
            got[field] = np.concatenate(parts) if c["reduction"] == "none" else np.stack(parts)
        else:
            got[field] = np.concatenate(parts)
    compare(c, got, want, scale)


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


def test_torch_all_gather_needs_process_group(request: pytest.FixtureRequest) -> None:
    needs_torch_distributed(request)
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


def test_gather_needs_rank() -> None:
    """Our protocol: a gather callable without ``rank()`` is refused with a TypeError."""
    q, k = np.ones((2, 4, 3))
    with pytest.raises(TypeError, match="rank"):
        infonce_xp.info_nce(q, k, gather=lambda x: x)
    with pytest.raises(TypeError, match="gather must be None or a callable"):
        infonce_xp.info_nce(q, k, gather="all")


# ----------------------------------------------------------------------------------------- JAX


@pytest.fixture(scope="module")
def jax_run(
    request: pytest.FixtureRequest, workdir: Any
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    selected(request, "jax")
    pytest.importorskip("jax")
    directory = workdir[0]
    run_python(
        [str(WORKER), "jax", str(directory)],
        timeout=240,
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
    jax_run: Any, workdir: Any, world: int, name: str, pattern: str
) -> None:
    """``reduced``: grad of the devices' mean loss under shard_map(check_vma=True) is the
    single-process gradient; ``local*``/``pmap``: grad of each device's own loss is W times it."""
    results, errors = jax_run
    _, cases, inputs = workdir
    c, k = cases[key(world, name)], key(world, name)
    prefix = f"{k}/{pattern}"
    if prefix in errors:
        pytest.fail(f"JAX worker failed for {prefix}:\n{errors[prefix]}")
    got = {
        f: results[f"{prefix}/{f}"]
        for f in (*INPUTS, "loss", "temperature")
        if f"{prefix}/{f}" in results
    }
    scale = world if (pattern in LOCAL and c["reduction"] == "mean") else 1
    compare(c, got, reference(c, inputs, k), scale)


def test_jax_gather_outside_mapped_context(request: pytest.FixtureRequest) -> None:
    selected(request, "jax")
    jax = pytest.importorskip("jax")
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


# ------------------------------------------------------------------------------------ examples


@pytest.mark.slow
def test_ddp_example_runs(request: pytest.FixtureRequest) -> None:
    needs_torch_distributed(request)
    output = run_python([str(EXAMPLES / "ddp_step.py")], timeout=120)
    assert "loss" in output


@pytest.mark.slow
def test_jax_shard_map_example_runs(request: pytest.FixtureRequest) -> None:
    selected(request, "jax")
    pytest.importorskip("jax")
    output = run_python([str(EXAMPLES / "jax_shard_map_step.py")], timeout=120, JAX_PLATFORMS="cpu")
    assert "loss" in output


_PER_DEVICE_LOSS = """
import sys
sys.path.insert(0, sys.argv[1])  # tests/, for the reference
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from infonce_xp import info_nce
from reference import reference_rows
mesh = Mesh(np.asarray(jax.devices()), ("b",))
q, k = np.random.default_rng(0).normal(size=(2, 8, 4)).astype(np.float32)
t = jnp.asarray(0.1)
# No gather: each device scores its own rows; the replicated temperature gets the psum of the
# devices' gradients (2 devices: twice the gradient of the mean loss), tiled or not.
for chunk_size in (None, 2):
    f = lambda q, k, t: jax.grad(lambda t: jax.lax.pmean(info_nce(q, k, temperature=t, chunk_size=chunk_size), "b"))(t)
    got = jax.shard_map(f, mesh=mesh, in_specs=(P("b"), P("b"), P()), out_specs=P())(q, k, t)
    step = 1e-3
    numeric = sum(
        (reference_rows(q[i : i + 4], k[i : i + 4], temperature=0.1 + step).mean()
         - reference_rows(q[i : i + 4], k[i : i + 4], temperature=0.1 - step).mean()) / (2 * step) / 2
        for i in (0, 4)
    )
    np.testing.assert_allclose(float(got), numeric, rtol=1e-3)
print("ok")
"""


def test_jax_per_device_loss_without_gather(request: pytest.FixtureRequest) -> None:
    """Under shard_map(check_vma=True), a local loss with a replicated temperature and tiles."""
    selected(request, "jax")
    pytest.importorskip("jax")
    output = run_python(
        ["-c", _PER_DEVICE_LOSS, str(Path(__file__).parent)],
        timeout=120,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    assert output.strip().endswith("ok")


class _OneWorker:
    """The gather protocol for a single worker: gather and scatter are the identity."""

    def __call__(self, x: Any) -> Any:
        return x

    def rank(self) -> int:
        return 0

    def scatter(self, grad: Any) -> Any:
        return grad


@pytest.mark.parametrize("options", [{}, {"symmetric": True}, {"negative_keys": True}])
def test_value_and_grad_with_a_gather_on_numpy(options: dict[str, Any]) -> None:
    """Without autograd, the gathered keys' gradient comes back through ``gather.scatter``."""
    import infonce_xp

    rng = np.random.default_rng(0)
    q, k, neg = rng.normal(size=(3, 6, 4))
    args = (q, k, neg) if options.pop("negative_keys", False) else (q, k)
    loss, grads = infonce_xp.info_nce_value_and_grad(*args, gather=_OneWorker(), **options)
    ref_loss, ref_grads = infonce_xp.info_nce_value_and_grad(*args, **options)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for got, ref in zip(grads, ref_grads):
        if ref is not None:
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
