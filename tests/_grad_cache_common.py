"""What the grad_cache tests share: the tolerance of "equal to full-batch", and torch's oracle.

Imports torch only inside the torch helpers, so that the JAX tests run without it.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any, NamedTuple

import numpy as np

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


def assert_close(actual: Any, expected: Any, dtype: str, what: str = "") -> None:
    """Equal to ``TOLERANCE[dtype]`` of the largest entry of ``expected``."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    error = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g} > {TOLERANCE[dtype]}"


# --------------------------------------------------------------------------------------------
# torch: a seeded model, seeded data, and the comparison with plain backward


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


def batch_norm_case(torch: Any, kind: str) -> tuple[Any, Any, Any]:
    """An MLP with BatchNorm1d (float64) shared by two views, and ``encode`` of ``kind``."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(12, 24), torch.nn.BatchNorm1d(24), torch.nn.Tanh(), torch.nn.Linear(24, 8)
    ).double()

    class Towers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, views: Any) -> tuple[Any, Any]:
            return self.net(views[0]), self.net(views[1])

        def embed(self, views: Any) -> tuple[Any, Any]:  # runs self.net, never self
            return self.net(views[0]), self.net(views[1])

    towers, compiled = Towers(), torch.compile(net, backend="eager")
    encode = {
        "closure": lambda v: (net(v[0]), net(v[1])),
        "module": towers,
        "bound method": towers.embed,
        "compiled": lambda v: (compiled(v[0]), compiled(v[1])),
    }
    return net, encode[kind], torch_views("float64", 30)


def buffers(module: Any) -> dict[str, Any]:
    return {name: b.clone() for name, b in module.named_buffers()}


def by_hand(torch: Any, encode: Any, views: Any, loss_fn: Any, micro_batch: int) -> Any:
    """Gradient accumulation written out: each micro-batch encoded with its graph, in order."""
    rows = len(views[0])
    parts = [
        encode(tuple(v[i : i + micro_batch] for v in views)) for i in range(0, rows, micro_batch)
    ]
    return loss_fn(*(torch.cat(tower) for tower in zip(*parts)))


# --------------------------------------------------------------------------------------------
# containers that inputs may come in


class Pair(NamedTuple):
    query: Any
    key: Any


class Batch(dict):  # type: ignore[type-arg]  # a dict whose constructor is not dict's
    def __init__(self, query: Any, key: Any) -> None:
        super().__init__(query=query, key=key)
        self.note = "kept"


def containers(query: Any, key: Any) -> dict[str, Any]:
    return {
        "defaultdict": defaultdict(list, query=query, key=key),
        "OrderedDict": OrderedDict(query=query, key=key),
        "namedtuple": Pair(query, key),
        "dict subclass": Batch(query, key),
        "nested": {"views": [Pair(query, key)], "extra": defaultdict(int, none=query)},
    }
