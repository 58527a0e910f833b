"""The one place that talks to ``array_api_compat``: namespaces, devices and the loop driver."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat
from array_api_compat import array_namespace, device, is_array_api_obj, is_jax_namespace

__all__ = [
    "array_namespace",
    "device",
    "is_array_api_obj",
    "is_jax_namespace",
    "is_torch_namespace",
    "python_scan",
    "row_dot",
]

Array = Any
Scan = Callable[..., Any]


def is_torch_namespace(xp: Any) -> bool:
    return bool(array_api_compat.is_torch_namespace(xp))


def python_scan(xp: Any) -> Scan:
    """A ``jax.lax.scan`` look-alike for eager backends: a Python loop over the leading axis."""

    def scan(body: Callable[..., Any], carry: Any, xs: tuple[Array, ...]) -> Any:
        ys = []
        for i in range(xs[0].shape[0]):
            carry, y = body(carry, tuple(x[i, ...] for x in xs))
            ys.append(y)
        if ys[0] is None:
            return carry, None
        return carry, tuple(xp.stack(column) for column in zip(*ys))

    return scan


def row_dot(xp: Any, a: Array, b: Array) -> Array:
    """``vecdot`` over the last axis; for torch, ``sum(a * b)``, which skips array-api-compat's
    ``vecdot`` wrapper (it costs several times the product itself)."""
    if is_torch_namespace(xp):
        return xp.sum(a * b, axis=-1)
    return xp.vecdot(a, b)


def as_array(xp: Any, x: Any) -> Any:
    """NumPy reductions return scalars; the contract promises 0-D arrays."""
    return xp.asarray(x) if array_api_compat.is_numpy_namespace(xp) else x
