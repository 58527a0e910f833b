"""The one place that talks to ``array_api_compat``, and the named primitives the math uses.

Each primitive has the standard's semantics; how it runs is decided once per namespace from
what that library's arrays can do (:class:`Traits`), never by the math asking which library it
runs on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
from array_api_compat import array_namespace, device, is_lazy_array, is_writeable_array

from ._typing import Array, Namespace

__all__ = [
    "Traits",
    "array_namespace",
    "as_array",
    "device",
    "fill_diagonal",
    "is_array_api_obj",
    "library",
    "python_scan",
    "row_dot",
    "subtract_exp",
    "traits",
]

Scan = Callable[..., Any]


@dataclass(frozen=True)
class Traits:
    """What a namespace's arrays allow, found once by probing a small array.

    writeable
        Standard in-place operators and ``__setitem__`` work (used on our own temporaries only).
    lazy
        The library traces and fuses element-wise work (XLA): a pass over a matrix that is
        about to die costs no memory, so the math may prefer it to an (N, D) temporary.
    exp_out
        ``xp.exp`` accepts ``out=``: an element-wise ``exp`` written over its input.
    scalar_reductions
        Reductions return scalars rather than 0-D arrays (NumPy).
    vecdot
        The namespace's ``vecdot`` is at least as fast as ``sum(a * b)``: not so for
        array-api-compat's torch ``vecdot``, which goes through ``bmm`` and costs several times
        the product itself.
    """

    writeable: bool
    lazy: bool
    exp_out: bool
    scalar_reductions: bool
    vecdot: bool


_TRAITS: dict[str, Traits] = {}  # by namespace name: a plain dict traces cleanly under compile


def traits(xp: Namespace) -> Traits:
    """The :class:`Traits` of ``xp`` (probed on first use, then cached)."""
    found = _TRAITS.get(xp.__name__)
    if found is None:
        probe = xp.zeros((2,))
        writeable = bool(is_writeable_array(probe))
        exp_out = False
        if writeable:
            with contextlib.suppress(TypeError):  # the standard's exp has no out=
                exp_out = xp.exp(probe, out=probe) is probe
        found = Traits(
            writeable=writeable,
            lazy=bool(is_lazy_array(probe)),
            exp_out=exp_out,
            scalar_reductions=not isinstance(xp.sum(probe), type(probe)),
            vecdot=library(xp) != "torch",
        )
        _TRAITS[xp.__name__] = found
    return found


def is_array_api_obj(x: Any) -> bool:
    """Whether ``x`` is an array of some array-API library (NumPy scalars count)."""
    return bool(array_api_compat.is_array_api_obj(x))


def library(xp: Namespace) -> str | None:
    """``"torch"`` or ``"jax"`` for the libraries with their own autograd bridge, else None."""
    if array_api_compat.is_torch_namespace(xp):
        return "torch"
    if array_api_compat.is_jax_namespace(xp):
        return "jax"
    return None


def _may_overwrite(xp: Namespace, x: Array) -> bool:
    # A tensor on an autograd tape may be saved by the op that made it: never write over it.
    return traits(xp).writeable and not getattr(x, "requires_grad", False)


def subtract_exp(xp: Namespace, x: Array, shift: Array) -> Array:
    """``exp(x - shift)``, written over ``x`` where the library can (``x`` must be our own)."""
    if not _may_overwrite(xp, x):
        return xp.exp(x - shift)
    x -= shift
    return xp.exp(x, out=x) if traits(xp).exp_out else xp.exp(x)


def fill_diagonal(xp: Namespace, x: Array, offset: Any, values: Any) -> Array:
    """``x`` (N, M) with ``x[i, offset + i] = values[i]`` (or the number ``values``).

    Where the library can, and ``offset`` is a Python int, a strided write of N entries over
    ``x`` (which must be our own); else a ``where`` over N x M.
    """
    n, m = x.shape
    if isinstance(offset, int) and _may_overwrite(xp, x):
        flat = xp.reshape(x, (-1,))
        flat[offset :: m + 1] = values
        return xp.reshape(flat, (n, m))
    if not isinstance(values, (int, float)):
        values = values[:, None]
    return xp.where(diagonal_mask(xp, x, offset, 0, 0), values, x)


def diagonal_mask(xp: Namespace, x: Array, offset: Any, row0: Any, col0: Any) -> Array:
    """The (N, M) mask of ``x``'s entries ``[i, offset + row0 + i - col0]``."""
    n, m = x.shape
    rows = xp.arange(n, device=device(x)) + row0 + offset
    cols = xp.arange(m, device=device(x)) + col0
    return cols[None, :] == rows[:, None]


def row_dot(xp: Namespace, a: Array, b: Array) -> Array:
    """``vecdot`` over the last axis of real arrays of one dtype."""
    return xp.vecdot(a, b) if traits(xp).vecdot else xp.sum(a * b, axis=-1)


def python_scan(xp: Namespace) -> Scan:
    """A ``jax.lax.scan`` look-alike for eager backends: a Python loop over the leading axis."""

    def scan(body: Callable[..., Any], carry: Any, xs: tuple[Array, ...]) -> Any:
        ys = []
        for i in range(xs[0].shape[0]):
            carry, y = body(carry, tuple(x[i, ...] for x in xs))
            ys.append(y)
        if not ys or ys[0] is None:
            return carry, None
        return carry, tuple(xp.stack(column) for column in zip(*ys))

    return scan


def as_array(xp: Namespace, x: Any) -> Array:
    """A 0-D array for a reduction's result: NumPy's reductions return scalars."""
    return xp.asarray(x) if traits(xp).scalar_reductions else x
