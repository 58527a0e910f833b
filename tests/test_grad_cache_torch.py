"""``grad_cache`` (torch and JAX) gives the gradients of plain full-batch training.

The oracle is the same model trained the plain way: ``loss_fn(*encode(inputs)).backward()`` in
torch, ``jax.value_and_grad`` of the whole batch in JAX. Gradients must agree to 1e-5 (float32)
or 1e-10 (float64) of their largest entry. With dropout, the oracle encodes the same
micro-batches with their graphs, so that both draw the same masks; a version of ``grad_cache``
that does not replay the random state must then *fail* that comparison. Torch tests need
torch, JAX tests need JAX; each is skipped, with the reason, without it.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _grad_cache_common import assert_close
from _subprocess import free_port, run_python

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.backends("torch")


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch", reason="grad_cache for torch needs torch")


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


@pytest.mark.slow
def test_torch_ddp_matches_single_process(torch: Any, tmp_path: Path) -> None:
    """2 gloo processes, DDP encoder, InfoNCE(gather=all_gather): the whole batch's gradient."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    import _grad_cache_worker as worker

    worker_args = [str(HERE / "_grad_cache_worker.py"), str(free_port()), str(tmp_path)]
    run_python(worker_args, timeout=180, OMP_NUM_THREADS="1")
    expected = worker.full_batch()
    for rank in range(worker.WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["reductions"] == 1  # no_sync: one all-reduce, after the last micro-batch
        for name, grad in expected.items():
            assert_close(result["grads"][name], grad, "float64", f"rank {rank}: {name}")
