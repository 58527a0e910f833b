"""``grad_cache`` (torch and JAX) gives the gradients of plain full-batch training.

The oracle is the same model trained the plain way: ``loss_fn(*encode(inputs)).backward()`` in
torch, ``jax.value_and_grad`` of the whole batch in JAX. Gradients must agree to 1e-5 (float32)
or 1e-10 (float64) of their largest entry. With dropout, the oracle encodes the same
micro-batches with their graphs, so that both draw the same masks; a version of ``grad_cache``
that does not replay the random state must then *fail* that comparison. Torch tests need
torch, JAX tests need JAX; each is skipped, with the reason, without it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import infonce_xp

HERE = Path(__file__).resolve().parent
SRC = Path(infonce_xp.__file__).resolve().parent.parent  # the infonce_xp under test, for children
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


@pytest.fixture
def torch(request: pytest.FixtureRequest) -> Any:
    if request.config.getoption("--backend") not in ("all", "torch"):
        pytest.skip("torch's grad_cache runs with --backend=torch or all")
    return pytest.importorskip("torch", reason="grad_cache for torch needs torch")


@pytest.fixture
def jax(request: pytest.FixtureRequest) -> Any:
    if request.config.getoption("--backend") not in ("all", "jax"):
        pytest.skip("JAX's grad_cache runs with --backend=jax or all")
    module = pytest.importorskip("jax", reason="grad_cache for JAX needs jax")
    module.config.update("jax_enable_x64", True)  # as conftest's jax backend does
    return module


def assert_close(actual: Any, expected: Any, dtype: str, what: str = "") -> None:
    """Equal to ``TOLERANCE[dtype]`` of the largest entry of ``expected``."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    error = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g} > {TOLERANCE[dtype]}"


# --------------------------------------------------------------------------------------------
# torch


def torch_grads(module: Any) -> dict[str, np.ndarray]:
    return {n: p.grad.detach().double().numpy().copy() for n, p in module.named_parameters()}


def torch_model(dtype: str, *, towers: int, dropout: float = 0.0) -> Any:
    """``towers`` MLP encoders in a ModuleList (float32 or float64), seeded."""
    import torch

    torch.manual_seed(0)

    def mlp() -> Any:
        return torch.nn.Sequential(
            torch.nn.Linear(12, 24),
            torch.nn.Tanh(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(24, 8),
        )

    return torch.nn.ModuleList([mlp() for _ in range(towers)]).to(getattr(torch, dtype))


def torch_views(dtype: str, rows: int = 37) -> tuple[Any, Any]:
    import torch

    data = torch.Generator().manual_seed(1)
    views = torch.randn(2, rows, 12, generator=data, dtype=getattr(torch, dtype))
    return views[0], views[1]


def compare_torch(
    torch: Any,
    model: Any,
    encode: Any,
    inputs: Any,
    loss_fn: Any,
    micro_batch: int,
    dtype: str,
    reference: Any = None,
) -> None:
    """grad_cache's gradients (model and loss_fn) against plain backward on the whole batch."""
    from infonce_xp.torch import grad_cache

    modules = (
        torch.nn.ModuleList([model, loss_fn]) if isinstance(loss_fn, torch.nn.Module) else model
    )
    torch.manual_seed(2)
    expected_loss = (reference or (lambda: loss_fn(*encode(inputs))))()
    expected_loss.backward()
    expected = torch_grads(modules)
    modules.zero_grad(set_to_none=True)

    torch.manual_seed(2)
    loss = grad_cache(encode, inputs, loss_fn, micro_batch)
    assert not loss.requires_grad
    assert_close(loss.item(), expected_loss.item(), dtype, "loss")
    actual = torch_grads(modules)
    assert actual.keys() == expected.keys()
    for name in expected:
        assert_close(actual[name], expected[name], dtype, name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("micro_batch", [8, 10, 37, 64])  # divides 40 / not 37 / all / more
def test_torch_two_towers(torch: Any, dtype: str, micro_batch: int) -> None:
    from infonce_xp.torch import InfoNCE

    model = torch_model(dtype, towers=2)
    rows = 40 if micro_batch == 8 else 37
    views = torch_views(dtype, rows)
    encode = lambda v: (model[0](v[0]), model[1](v[1]))  # noqa: E731
    compare_torch(torch, model, encode, views, InfoNCE(), micro_batch, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "options",
    [
        {"symmetric": True},
        {"chunk_size": 5},
        {"symmetric": True, "chunk_size": 6, "learn_temperature": True, "temperature": 0.2},
    ],
    ids=["symmetric", "tiled", "symmetric-tiled-learned"],
)
def test_torch_shared_encoder_dict_inputs(torch: Any, dtype: str, options: dict[str, Any]) -> None:
    from infonce_xp.torch import InfoNCE

    model = torch_model(dtype, towers=1)
    query, key = torch_views(dtype)
    inputs = {"query": query, "pair": [key]}
    encode = lambda b: (model[0](b["query"]), model[0](b["pair"][0]))  # noqa: E731
    loss_fn = InfoNCE(**options).to(getattr(torch, dtype))
    compare_torch(torch, model, encode, inputs, loss_fn, 10, dtype)  # loss_fn's parameters too


def test_torch_learned_temperature_gradient(torch: Any) -> None:
    from infonce_xp.torch import InfoNCE, grad_cache

    model = torch_model("float64", towers=1)
    views = torch_views("float64")
    encode = lambda v: (model[0](v[0]), model[0](v[1]))  # noqa: E731
    loss_fn = InfoNCE(temperature=0.3, learn_temperature=True).double()
    loss_fn(*encode(views)).backward()
    expected = loss_fn.log_inverse_temperature.grad.clone()
    loss_fn.zero_grad(set_to_none=True)
    grad_cache(encode, views, loss_fn, micro_batch=6)
    assert expected.abs() > 1e-3  # a real gradient
    assert_close(loss_fn.log_inverse_temperature.grad, expected, "float64", "temperature")


def test_torch_one_tower_and_own_loss(torch: Any) -> None:
    """A bare tensor from encode is one tower; loss_fn may be any function of the embeddings."""
    model = torch_model("float64", towers=1)
    points = torch_views("float64")[0]

    def spread(embedding: Any) -> Any:  # any scalar function of the whole batch
        return (embedding @ embedding.T).logsumexp(dim=1).mean()

    reference = lambda: spread(model[0](points))  # noqa: E731
    compare_torch(torch, model, model[0], points, spread, 9, "float64", reference)


def test_torch_accumulates_like_backward(torch: Any) -> None:
    """Existing .grad are added to, as backward() does (gradient accumulation over steps)."""
    from infonce_xp.torch import InfoNCE, grad_cache

    model = torch_model("float64", towers=1)
    views = torch_views("float64")
    encode = lambda v: (model[0](v[0]), model[0](v[1]))  # noqa: E731
    InfoNCE()(*encode(views)).backward()
    once = torch_grads(model)
    grad_cache(encode, views, InfoNCE(), 7)
    for name, grad in torch_grads(model).items():
        assert_close(grad, 2 * once[name], "float64", name)


def dropout_case(torch: Any) -> tuple[Any, Any, Any, Any]:
    from infonce_xp.torch import InfoNCE

    model = torch_model("float64", towers=1, dropout=0.5)
    views = torch_views("float64", 30)
    encode = lambda v: (model[0](v[0]), model[0](v[1]))  # noqa: E731
    loss_fn = InfoNCE(symmetric=True)

    def micro_batched_with_graph() -> Any:  # draws the masks in grad_cache's first-pass order
        parts = [encode(tuple(v[i : i + 8] for v in views)) for i in range(0, 30, 8)]
        return loss_fn(*(torch.cat(tower) for tower in zip(*parts)))

    return model, views, encode, (loss_fn, micro_batched_with_graph)


def test_torch_dropout_is_replayed(torch: Any) -> None:
    model, views, encode, (loss_fn, reference) = dropout_case(torch)
    compare_torch(torch, model, encode, views, loss_fn, 8, "float64", reference)
    # The generator is left as the first pass left it: as plain training would leave it.
    torch.manual_seed(2)
    reference()
    after_plain = torch.get_rng_state()
    torch.manual_seed(2)
    from infonce_xp.torch import grad_cache

    grad_cache(encode, views, loss_fn, 8)
    assert torch.equal(torch.get_rng_state(), after_plain)


def test_torch_dropout_without_replay_differs(torch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dropout test can fail: without the replay, the second pass draws other masks."""
    from infonce_xp import _torch_grad_cache

    monkeypatch.setattr(_torch_grad_cache, "_replay", lambda devices, state: nullcontext())
    model, views, encode, (loss_fn, reference) = dropout_case(torch)
    with pytest.raises(AssertionError, match="relative error"):
        compare_torch(torch, model, encode, views, loss_fn, 8, "float64", reference)


def test_torch_no_sync_for_all_but_the_last(torch: Any) -> None:
    from infonce_xp.torch import InfoNCE, grad_cache

    model = torch_model("float64", towers=1)
    views = torch_views("float64")  # 37 rows: micro-batches 10, 10, 10, 7
    entered = []

    def no_sync() -> Any:
        entered.append(1)
        return nullcontext()

    grad_cache(lambda v: (model[0](v[0]), model[0](v[1])), views, InfoNCE(), 10, no_sync=no_sync)
    assert len(entered) == 3


def autocast_case(torch: Any, loss_fn: Any) -> None:
    """Full-batch training under CPU bfloat16 autocast against grad_cache under the same."""
    from infonce_xp.torch import grad_cache

    model = torch_model("float32", towers=2)
    views = torch_views("float32", 32)
    encode = lambda v: (model[0](v[0]), model[1](v[1]))  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_loss = loss_fn(*encode(views))
    expected_loss.backward()
    expected = torch_grads(model)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = grad_cache(encode, views, loss_fn, 8)
    assert loss.dtype == expected_loss.dtype
    np.testing.assert_allclose(loss.float().item(), expected_loss.float().item(), rtol=2e-2)
    for name, grad in torch_grads(model).items():
        scale = np.abs(expected[name]).max()
        # bfloat16 has 8 bits of mantissa: rows encoded in other batch shapes round differently
        np.testing.assert_allclose(grad, expected[name], atol=0.05 * scale, err_msg=name)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_torch_autocast_own_loss(torch: Any) -> None:
    def clip(query: Any, key: Any) -> Any:  # a user's own InfoNCE, in plain torch
        query = torch.nn.functional.normalize(query.float(), dim=-1)
        key = torch.nn.functional.normalize(key.float(), dim=-1)
        logits = query @ key.T / 0.1
        labels = torch.arange(len(query))
        return torch.nn.functional.cross_entropy(logits, labels)

    autocast_case(torch, clip)


def test_torch_autocast_infonce(torch: Any) -> None:
    from infonce_xp.torch import InfoNCE

    autocast_case(torch, InfoNCE(symmetric=True, chunk_size=8))


BAD_TORCH = {
    "micro_batch zero": (
        {"micro_batch": 0},
        ValueError,
        "micro_batch must be a positive int; got 0",
    ),
    "micro_batch float": (
        {"micro_batch": 2.0},
        TypeError,
        "micro_batch must be a positive int; got 2.0",
    ),
    "micro_batch bool": (
        {"micro_batch": True},
        TypeError,
        "micro_batch must be a positive int; got True",
    ),
    "rows differ": (
        {"inputs": "rows differ"},
        ValueError,
        r"inputs must share their number of rows; got inputs\[0\]: 6, inputs\[1\]: 5",
    ),
    "empty": ({"inputs": "empty"}, ValueError, "inputs must hold a non-empty batch; got 0 rows"),
    "no tensors": ({"inputs": "no tensors"}, ValueError, "inputs must hold at least one tensor"),
    "not a tensor": ({"inputs": "not a tensor"}, TypeError, r"inputs\[1\]\[1\] is of type int"),
    "encode rows": (
        {"encode": "rows"},
        ValueError,
        r"encode must return one row per input row: 4 rows .* got shapes \[\(4, 8\), \(3, 8\)\]",
    ),
    "encode type": ({"encode": "type"}, TypeError, "encode must return a tensor or a tuple"),
    "loss vector": (
        {"loss_fn": "vector"},
        ValueError,
        r"loss_fn must return a 0-D .* got shape \(6,\)",
    ),
    "loss float": (
        {"loss_fn": "float"},
        TypeError,
        "loss_fn must return a 0-D tensor; got a float",
    ),
    "loss detached": ({"loss_fn": "detached"}, ValueError, "does not depend on the embeddings"),
}


@pytest.mark.parametrize("case", BAD_TORCH.values(), ids=BAD_TORCH.keys())
def test_torch_bad_arguments(torch: Any, case: tuple[dict[str, Any], type, str]) -> None:
    from infonce_xp.torch import InfoNCE, grad_cache

    change, error, message = case
    model = torch_model("float32", towers=1)
    views = torch_views("float32", 6)
    inputs = {
        "rows differ": (views[0], views[1][:5]),
        "empty": (views[0][:0], views[1][:0]),
        "no tensors": (),
        "not a tensor": (views[0], [views[1], 2]),
    }.get(change.get("inputs"), views)
    encode = {
        "rows": lambda v: (model[0](v[0]), model[0](v[1])[:3]),
        "type": lambda v: [v[0].numpy()],
    }.get(change.get("encode"), lambda v: (model[0](v[0]), model[0](v[1])))
    loss_fn = {
        "vector": InfoNCE(reduction="none"),
        "float": lambda q, k: 1.0,
        "detached": lambda q, k: InfoNCE()(q, k).detach(),
    }.get(change.get("loss_fn"), InfoNCE())
    with pytest.raises(error, match=message):
        grad_cache(encode, inputs, loss_fn, change.get("micro_batch", 4))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_torch_ddp_matches_single_process(torch: Any, tmp_path: Path) -> None:
    """2 gloo processes, DDP encoder, InfoNCE(gather=all_gather): the whole batch's gradient."""
    pytest.importorskip("torch.distributed", reason="needs torch.distributed")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    import _grad_cache_worker as worker

    environ = {**os.environ, "OMP_NUM_THREADS": "1"}
    environ["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), environ.get("PYTHONPATH", "")])
    command = [sys.executable, str(HERE / "_grad_cache_worker.py"), str(free_port()), str(tmp_path)]
    proc = subprocess.Popen(
        command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"DDP workers hung (killed after 180 s):\n{output}")
    assert proc.returncode == 0, output

    expected = worker.full_batch()
    for rank in range(worker.WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["reductions"] == 1  # no_sync: one all-reduce, after the last micro-batch
        for name, grad in expected.items():
            assert_close(result["grads"][name], grad, "float64", f"rank {rank}: {name}")


# --------------------------------------------------------------------------------------------
# JAX


def jax_setup(jax: Any, dtype: str, rows: int = 37) -> tuple[Any, Any]:
    """Two MLP towers' parameters and a dict of two views, seeded."""
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), 6)

    def normal(key: Any, shape: tuple[int, ...]) -> Any:
        return jax.random.normal(key, shape, dtype=getattr(jnp, dtype)) / np.sqrt(shape[0])

    params = {
        "query": (normal(keys[0], (12, 24)), normal(keys[1], (24, 8))),
        "key": (normal(keys[2], (12, 24)), normal(keys[3], (24, 8))),
    }
    views = {"a": normal(keys[4], (rows, 12)) * 4, "b": (normal(keys[5], (rows, 12)) * 4,)}
    return params, views


def mlp(weights: tuple[Any, Any], x: Any) -> Any:
    import jax.numpy as jnp

    return jnp.tanh(x @ weights[0]) @ weights[1]


def two_towers(params: Any, views: Any) -> tuple[Any, Any]:
    return mlp(params["query"], views["a"]), mlp(params["key"], views["b"][0])


def shared(params: Any, views: Any) -> tuple[Any, Any]:
    return mlp(params["query"], views["a"]), mlp(params["query"], views["b"][0])


def compare_jax(
    jax: Any, encode: Any, params: Any, views: Any, loss_fn: Any, micro_batch: int, dtype: str
) -> None:
    from infonce_xp.jax import grad_cache

    def plain(p: Any) -> Any:
        embeddings = encode(p, views)
        return loss_fn(*(embeddings if isinstance(embeddings, tuple) else (embeddings,)))

    full = jax.value_and_grad(plain)
    expected_loss, expected = full(params)
    step = jax.jit(partial(grad_cache, encode, loss_fn=loss_fn, micro_batch=micro_batch))
    loss, grads = step(params, views)
    assert loss.dtype == expected_loss.dtype and loss.shape == ()
    assert_close(loss, expected_loss, dtype, "loss")
    paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    for (path, want), got in zip(paths, jax.tree_util.tree_leaves(grads)):
        assert got.dtype == want.dtype
        assert_close(got, want, dtype, jax.tree_util.keystr(path))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("micro_batch", [8, 10, 37, 64])
def test_jax_two_towers(jax: Any, dtype: str, micro_batch: int) -> None:
    from infonce_xp import info_nce

    params, views = jax_setup(jax, dtype, 40 if micro_batch == 8 else 37)
    compare_jax(jax, two_towers, params, views, info_nce, micro_batch, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "options", [{"symmetric": True}, {"chunk_size": 5}, {"symmetric": True, "chunk_size": 6}]
)
def test_jax_shared_encoder(jax: Any, dtype: str, options: dict[str, Any]) -> None:
    from infonce_xp import info_nce

    params, views = jax_setup(jax, dtype)
    params = {"query": params["query"]}
    compare_jax(jax, shared, params, views, partial(info_nce, **options), 10, dtype)


def test_jax_learned_temperature(jax: Any) -> None:
    import jax.numpy as jnp

    from infonce_xp import info_nce
    from infonce_xp.jax import grad_cache

    params, views = jax_setup(jax, "float64")
    temperature = jnp.asarray(0.2, jnp.float64)

    def loss_fn(t: Any, q: Any, k: Any) -> Any:
        return info_nce(q, k, temperature=t, symmetric=True, chunk_size=8)

    expected_loss, (expected, expected_t) = jax.value_and_grad(
        lambda p, t: loss_fn(t, *two_towers(p, views)), argnums=(0, 1)
    )(params, temperature)
    step = jax.jit(grad_cache, static_argnums=(0, 3, 4))
    loss, (grads, grad_t) = step(two_towers, params, views, loss_fn, 10, loss_params=temperature)
    assert_close(loss, expected_loss, "float64", "loss")
    assert abs(float(expected_t)) > 1e-3
    assert_close(grad_t, expected_t, "float64", "temperature")
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected)):
        assert_close(got, want, "float64")


def test_jax_one_tower(jax: Any) -> None:

    params, views = jax_setup(jax, "float64")

    def encode(p: Any, x: Any) -> Any:
        return mlp(p["query"], x)

    def spread(e: Any) -> Any:
        return jax.nn.logsumexp(e @ e.T, axis=1).mean()

    compare_jax(jax, encode, params, views["a"], spread, 9, "float64")


def test_jax_loop_is_not_unrolled(jax: Any) -> None:
    """A scan over the micro-batches: the program's size does not grow with their number."""
    from infonce_xp import info_nce
    from infonce_xp.jax import grad_cache

    def program(rows: int) -> str:
        params, views = jax_setup(jax, "float32", rows)
        step = partial(grad_cache, two_towers, loss_fn=info_nce, micro_batch=4)
        return str(jax.make_jaxpr(step)(params, views))

    few, many = program(4 * 3 + 1), program(4 * 30 + 1)
    assert "scan" in few
    assert few.count("dot_general") == many.count("dot_general")
    # 2 towers x (first pass, vjp) x (the scan's body, the remainder), whatever the batch
    assert few.count("tanh") == many.count("tanh") == 8


BAD_JAX = {
    "micro_batch zero": (
        {"micro_batch": 0},
        ValueError,
        "micro_batch must be a positive int; got 0",
    ),
    "micro_batch float": (
        {"micro_batch": 2.0},
        TypeError,
        "micro_batch must be a positive Python int",
    ),
    "rows differ": (
        {"inputs": "rows differ"},
        ValueError,
        r"got inputs\['a'\]: 6, inputs\['b'\]\[0\]: 5",
    ),
    "empty": ({"inputs": "empty"}, ValueError, "inputs must hold a non-empty batch; got 0 rows"),
    "0-D": ({"inputs": "0-D"}, ValueError, r"inputs\['c'\] is 0-D"),
    "encode rows": (
        {"encode": "rows"},
        ValueError,
        r"encode must return one row per input row: 4 rows",
    ),
    "encode type": ({"encode": "type"}, TypeError, "encode must return an array or a tuple"),
    "loss vector": (
        {"loss_fn": "vector"},
        ValueError,
        r"loss_fn must return a 0-D .* got shape \(6,\)",
    ),
    "loss float": ({"loss_fn": "float"}, TypeError, "loss_fn must return a 0-D array; got a float"),
}


@pytest.mark.parametrize("case", BAD_JAX.values(), ids=BAD_JAX.keys())
def test_jax_bad_arguments(jax: Any, case: tuple[dict[str, Any], type, str]) -> None:
    import jax.numpy as jnp

    from infonce_xp import info_nce
    from infonce_xp.jax import grad_cache

    change, error, message = case
    params, views = jax_setup(jax, "float32", 6)
    inputs = {
        "rows differ": {"a": views["a"], "b": (views["b"][0][:5],)},
        "empty": {"a": views["a"][:0], "b": (views["b"][0][:0],)},
        "0-D": {**views, "c": jnp.float32(1)},
    }.get(change.get("inputs"), views)
    encode = {
        "rows": lambda p, v: (two_towers(p, v)[0], two_towers(p, v)[1][:3]),
        "type": lambda p, v: {"q": two_towers(p, v)[0]},
    }.get(change.get("encode"), two_towers)
    loss_fn = {
        "vector": partial(info_nce, reduction="none"),
        "float": lambda q, k: 1.0,
    }.get(change.get("loss_fn"), info_nce)
    with pytest.raises(error, match=message):
        grad_cache(encode, params, inputs, loss_fn, change.get("micro_batch", 4))
