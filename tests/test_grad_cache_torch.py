"""``grad_cache`` (torch and JAX) gives the gradients of plain full-batch training.

The oracle is the same model trained the plain way: ``loss_fn(*encode(inputs)).backward()`` in
torch, ``jax.value_and_grad`` of the whole batch in JAX. Gradients must agree to 1e-5 (float32)
or 1e-10 (float64) of their largest entry. With dropout, the oracle encodes the same
micro-batches with their graphs, so that both draw the same masks; a version of ``grad_cache``
that does not replay the random state must then *fail* that comparison. Torch tests need
torch, JAX tests need JAX; each is skipped, with the reason, without it.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _grad_cache_common import (
    assert_close,
    batch_norm_case,
    buffers,
    by_hand,
    compare_torch,
    containers,
    torch_grads,
    torch_model,
    torch_views,
)
from _subprocess import free_port, run_python

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.backends("torch")


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch", reason="grad_cache for torch needs torch")


# --------------------------------------------------------------------------------------------
# torch


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


# --------------------------------------------------------------------------------------------
# module state: the graph-free pass updates nothing, the pass with the graph counts once


@pytest.mark.parametrize("kind", ["closure", "module", "bound method", "compiled"])
def test_torch_batch_norm_one_micro_batch_updates_like_plain_training(
    torch: Any, kind: str
) -> None:
    from infonce_xp.torch import InfoNCE, grad_cache

    net, encode, views = batch_norm_case(torch, kind)
    InfoNCE()(*encode(views)).backward()
    expected, expected_grads = buffers(net), torch_grads(net)
    net, encode, views = batch_norm_case(torch, kind)
    grad_cache(encode, views, InfoNCE(), micro_batch=30)
    assert int(net[1].num_batches_tracked) == 2  # two views: two forward calls of the net
    for name, buffer in buffers(net).items():
        assert torch.equal(buffer, expected[name]), name
    for name, grad in torch_grads(net).items():
        assert_close(grad, expected_grads[name], "float64", name)


def test_torch_batch_norm_counts_each_micro_batch_once(torch: Any) -> None:
    from infonce_xp.torch import InfoNCE, grad_cache

    net, encode, views = batch_norm_case(torch, "closure")
    by_hand(torch, encode, views, InfoNCE(), 8).backward()
    expected, expected_grads = buffers(net), torch_grads(net)
    net, encode, views = batch_norm_case(torch, "closure")
    grad_cache(encode, views, InfoNCE(), micro_batch=8)  # 30 rows: 8, 8, 8, 6
    assert int(net[1].num_batches_tracked) == 2 * 4  # two views, four micro-batches
    for name, buffer in buffers(net).items():
        assert_close(buffer.double().numpy(), expected[name].double().numpy(), "float64", name)
    for name, grad in torch_grads(net).items():
        assert_close(grad, expected_grads[name], "float64", name)


def test_torch_replay_sees_the_state_of_its_graph_free_pass(torch: Any) -> None:
    """A spectral norm's power iteration (buffers that change the output) gives exact gradients."""
    from torch.nn.utils.parametrizations import spectral_norm

    from infonce_xp.torch import InfoNCE, grad_cache

    torch.manual_seed(0)
    net = torch.nn.Sequential(spectral_norm(torch.nn.Linear(12, 24)), torch.nn.Tanh()).double()
    encode = lambda v: (net(v[0]), net(v[1]))  # noqa: E731
    views, start = torch_views("float64", 30), buffers(net)
    expected_loss = by_hand(torch, encode, views, InfoNCE(), 8)
    expected_loss.backward()
    expected, expected_grads = buffers(net), torch_grads(net)
    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, buffer in net.named_buffers():
            buffer.copy_(start[name])
    loss = grad_cache(encode, views, InfoNCE(), micro_batch=8)
    assert_close(loss, expected_loss.detach(), "float64", "loss")
    for name, grad in torch_grads(net).items():
        assert_close(grad, expected_grads[name], "float64", name)
    for name, buffer in buffers(net).items():
        assert_close(buffer.numpy(), expected[name].numpy(), "float64", name)


def test_torch_buffers_are_kept_when_encode_fails(torch: Any) -> None:
    """A bad embedding is refused before the loss runs, and BatchNorm has not counted it."""
    from infonce_xp.torch import grad_cache

    net, _, views = batch_norm_case(torch, "closure")
    before = buffers(net)
    calls = []
    with pytest.raises(TypeError, match=r"got tower 0 of dtype torch.int64 and shape"):
        grad_cache(lambda v: net(v[0]).long(), views, lambda e: calls.append(e), 8)
    assert not calls
    for name, buffer in buffers(net).items():
        assert torch.equal(buffer, before[name]), name


# --------------------------------------------------------------------------------------------
# inputs of any container type reach encode as that type


@pytest.mark.parametrize("container", list(containers(0, 0)))
def test_torch_inputs_keep_their_container_types(torch: Any, container: str) -> None:
    from infonce_xp.torch import InfoNCE

    model = torch_model("float64", towers=1)
    inputs = containers(*torch_views("float64"))[container]
    seen = []

    def encode(batch: Any) -> tuple[Any, Any]:
        seen.append(batch)
        pair = batch["views"][0] if container == "nested" else batch
        if container == "nested":
            assert type(batch["extra"]) is defaultdict and batch["extra"].default_factory is int
        if isinstance(pair, tuple):
            return model[0](pair.query), model[0](pair.key)
        return model[0](pair["query"]), model[0](pair["key"])

    compare_torch(torch, model, encode, inputs, InfoNCE(), 10, "float64")
    assert all(type(batch) is type(inputs) for batch in seen)
    if container == "defaultdict":
        assert all(batch.default_factory is list for batch in seen)
    if container == "dict subclass":
        assert all(batch.note == "kept" for batch in seen)


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
    "encode integers": (
        {"encode": "integers"},
        TypeError,
        r"encode must return floating-point embeddings .* got tower 1 of dtype torch.int64 "
        r"and shape \(4, 8\)",
    ),
    "encode width changes": (
        {"encode": "width"},
        ValueError,
        r"the same shape .* tower 0 was \(rows, 8\) torch.float32 on cpu, then \(rows, 4\)",
    ),
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
        "integers": lambda v: (model[0](v[0]), model[0](v[1]).long()),
        "width": lambda v: (model[0](v[0])[:, : 8 if len(v[0]) == 4 else 4], model[0](v[1])),
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
