"""The one place that talks to ``array_api_compat``, and the named primitives the math uses.

Each primitive has the standard's semantics; how it runs is decided once per namespace from
what that library's arrays can do (:class:`Traits`), never by the math asking which library it
runs on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from array_api_compat import is_lazy_array, is_writeable_array

from ._namespaces import (
    Now,
    array_namespace,
    device,
    is_array_api_obj,
    is_torch_tensor,
    library,
    library_name,
    result_type,
    torch_compiling,
    torch_now,
)
from ._typing import Array, Namespace

__all__ = [
    "Traits",
    "add_at",
    "array_namespace",
    "as_array",
    "clip_min",
    "concat_rows",
    "device",
    "diagonal",
    "divide_into",
    "fill_diagonal",
    "fill_where",
    "is_array_api_obj",
    "is_torch_tensor",
    "library",
    "library_name",
    "may_write",
    "multiply_into",
    "result_type",
    "row_dot",
    "row_norms",
    "split_rows",
    "subtract_diagonal",
    "subtract_exp",
    "subtract_into",
    "subtract_product",
    "torch_compiling",
    "traits",
]

Scan = Callable[..., Any]


@dataclass(frozen=True)
class Traits:
    """What a namespace's arrays allow, found once by probing a small array. The callables
    answer for right now (a transform or a compiler may be running).

    writeable
        Standard in-place operators and ``__setitem__`` work (on our own temporaries only).
    lazy
        The library traces and fuses element-wise work (XLA): a pass over a dying matrix costs
        no memory, so the math may prefer it to an (N, D) temporary.
    exp_in_place
        How ``exp`` is written over its input: ``"method"`` (``x.exp_()``), ``"out"``
        (``xp.exp(x, out=x)``) or ``""`` (not at all: the standard has neither).
    scalar_reductions
        Reductions return scalars rather than 0-D arrays (NumPy).
    watched
        A transform watches writes in place (``torch.func``).
    diagonal_view, diagonal_read
        Arrays have a ``diagonal(offset)`` method that returns a writeable view (torch, CuPy):
        one call, where a strided write through a flat reshape is three; ``linalg.diagonal``
        may be called. Neither while torch compiles (Inductor warns on ``diagonal``).
    fusing
        A compiler fuses element-wise work (XLA; torch while compiling): stacking arrays to
        save operations gains nothing.
    fill
        The method that fills an array (a view) with one number in one kernel: ``"fill_"``
        (torch), ``"fill"`` (NumPy, CuPy) or ``""`` (none: item assignment).
    masked_fill
        Arrays have ``masked_fill_(mask, value)`` (torch), where boolean item assignment would
        synchronise on the mask's count.
    addcmul
        Arrays have ``addcmul_(a, b, value=v)`` (torch): ``x += v * a * b`` in one operation.
    overwrite
        Whether one of our own temporaries may be written over now: the arrays are writeable,
        and (torch) it is on no autograd tape and no ``torch.func`` transform watches.
    """

    writeable: bool
    lazy: bool
    exp_in_place: str
    scalar_reductions: bool
    diagonal_view: Callable[[], bool]
    diagonal_read: Callable[[], bool]
    fusing: Callable[[], bool]
    watched: Callable[[], bool]
    fill: str = ""
    masked_fill: bool = False
    addcmul: bool = False
    overwrite: Callable[[Any], bool] = lambda x: False


_TRAITS: dict[str, Traits] = {}  # by namespace name: a plain dict traces cleanly under compile
# What some libraries' arrays are known to allow (writeable, lazy, diagonal a writeable view):
# array-api-compat's probes of these are lru_cache'd, which torch.compile warns about when the
# first call of a process is compiled.
_KNOWN = {"torch": (True, False, True)}


def traits(xp: Namespace) -> Traits:
    """The :class:`Traits` of ``xp`` (probed on first use, then cached)."""
    found = _TRAITS.get(xp.__name__)
    if found is None:
        probe = xp.zeros((2,))
        known = _KNOWN.get(library(xp) or "")
        writeable = known[0] if known else bool(is_writeable_array(probe))
        exp_in_place = ""
        if writeable and hasattr(probe, "exp_"):
            exp_in_place = "method"
        elif writeable:
            with contextlib.suppress(TypeError):  # the standard's exp has no out=
                exp_in_place = "out" if xp.exp(probe, out=probe) is probe else ""
        lazy = known[1] if known else bool(is_lazy_array(probe))
        now = torch_now() if library(xp) == "torch" else None
        found = Traits(
            writeable=writeable,
            lazy=lazy,
            exp_in_place=exp_in_place,
            scalar_reductions=not isinstance(xp.sum(probe), type(probe)),
            diagonal_view=_diagonal_view(xp, known, now) if writeable else _never,
            diagonal_read=now.not_compiling if now else _always,
            fusing=_always if lazy else now.compiling if now else _never,
            watched=now.transforms if now else _never,
            fill=next((m for m in ("fill_", "fill") if writeable and hasattr(probe, m)), ""),
            masked_fill=writeable and hasattr(probe, "masked_fill_"),
            addcmul=writeable and hasattr(probe, "addcmul_"),
            overwrite=now.overwrite if now else _always_1 if writeable else _never_1,
        )
        _TRAITS[xp.__name__] = found
    return found


def _may_overwrite(xp: Namespace, x: Array) -> bool:
    return traits(xp).overwrite(x)


def _always_1(x: Any) -> bool:
    return True


def _never_1(x: Any) -> bool:
    return False


def _never() -> bool:
    return False


def _diagonal_view(
    xp: Namespace, known: tuple[bool, ...] | None, now: Now | None
) -> Callable[[], bool]:
    square = xp.zeros((2, 2))
    if known is not None:
        view = known[2]
    else:
        view = hasattr(square, "diagonal") and bool(is_writeable_array(square.diagonal()))
    if not view:
        return _never  # NumPy's diagonal is read-only; the standard has none
    return now.not_compiling if now else _always


def _always() -> bool:
    return True


def subtract_exp(xp: Namespace, x: Array, shift: Array | None) -> Array:
    """``exp(x - shift)`` (``exp(x)`` if None), written over ``x`` where the library can (``x``
    must be our own)."""
    found = traits(xp)
    if not found.overwrite(x):
        return xp.exp(x if shift is None else x - shift)
    if shift is not None:
        x -= shift
    how = found.exp_in_place
    if how == "method":
        return x.exp_()
    return xp.exp(x, out=x) if how == "out" else xp.exp(x)


def subtract_into(xp: Namespace, x: Array, y: Array) -> Array:
    """``x - y``, written over ``x`` where the library can (``x`` must be our own)."""
    if not _may_overwrite(xp, x):
        return x - y
    x -= y
    return x


def subtract_product(xp: Namespace, x: Array, a: Array, b: Array) -> Array:
    """``x - a * b``, written over ``x`` where the library can (``x`` must be our own): one
    operation where the library has it (torch's ``addcmul_``)."""
    found = traits(xp)
    if not found.overwrite(x):
        return x - a * b
    if found.addcmul:
        return x.addcmul_(a, b, value=-1)
    x -= a * b
    return x


def multiply_into(xp: Namespace, x: Array, y: Array) -> Array:
    """``x * y``, written over ``x`` where the library can (``x`` must be our own)."""
    if not _may_overwrite(xp, x):
        return x * y
    x *= y
    return x


def divide_into(xp: Namespace, x: Array, y: Array) -> Array:
    """``x / y``, written over ``x`` where the library can (``x`` must be our own)."""
    if not _may_overwrite(xp, x):
        return x / y
    x /= y
    return x


def fill_diagonal(xp: Namespace, x: Array, offset: Any, values: Any) -> Array:
    """``x`` (N, M) with ``x[i, offset + i] = values[i]`` (or the number ``values``).

    Where the library can, and ``offset`` is a Python int, a strided write of N entries over
    ``x`` (which must be our own); else a ``where`` over N x M. Also a ``where`` while a
    compiler fuses element-wise work (``torch.compile``): it turns the strided write into a
    pass over every entry and a second N x M buffer, where the ``where`` joins the next pass.
    """
    n, m = x.shape
    found = traits(xp)
    if isinstance(offset, int) and found.overwrite(x) and not found.fusing():
        if found.diagonal_view():
            view = x.diagonal(offset)
            if isinstance(values, (int, float)) and found.fill:
                # one kernel; item assignment would copy a wrapped number
                getattr(view, found.fill)(values)
            else:
                view[...] = values
            return x
        flat = xp.reshape(x, (-1,))
        flat[offset :: m + 1] = values
        return xp.reshape(flat, (n, m))
    if not isinstance(values, (int, float)):
        values = values[:, None]
    return xp.where(diagonal_mask(xp, x, offset, 0, 0), values, x)


def subtract_diagonal(xp: Namespace, x: Array, offset: Any, values: Array) -> Array:
    """``x`` (N, M) with ``values[i]`` subtracted from ``x[i, offset + i]``: one strided write
    in place where the library can (``x`` must be our own)."""
    found = traits(xp)
    if isinstance(offset, int) and found.overwrite(x) and found.diagonal_view():
        view = x.diagonal(offset)
        view -= values  # in place through the view (item assignment would copy it back)
        return x
    return fill_diagonal(xp, x, offset, diagonal(xp, x, offset) - values)


def fill_where(xp: Namespace, x: Array, mask: Array, value: float) -> Array:
    """``where(mask, value, x)``, written over ``x`` where the library can (``x`` our own)."""
    found = traits(xp)
    if not found.overwrite(x):
        return xp.where(mask, value, x)
    if found.masked_fill:  # boolean __setitem__ would sync on the mask's count
        return x.masked_fill_(mask, value)
    x[mask] = value
    return x


def diagonal(xp: Namespace, x: Array, offset: Any) -> Array:
    """A copy of the entries ``x[i, offset + i]`` (N,) of an (N, M) matrix."""
    if isinstance(offset, int) and traits(xp).diagonal_read():
        # a copy (the matrix is overwritten next), which autograd follows
        return native(xp).copy(xp.linalg.diagonal(x, offset=offset))
    return xp.sum(xp.where(diagonal_mask(xp, x, offset, 0, 0), x, 0.0), axis=-1)


def diagonal_mask(xp: Namespace, x: Array, offset: Any, row0: Any, col0: Any) -> Array:
    """The (N, M) mask of ``x``'s entries ``[i, offset + row0 + i - col0]``."""
    n, m = x.shape
    rows = xp.arange(n, device=device(x)) + row0 + offset
    cols = xp.arange(m, device=device(x)) + col0
    return cols[None, :] == rows[:, None]


# Delegation (array-api-extra's pattern): where array-api-compat's wrapper costs more than the
# op (argument checks and promotion in Python, which small arrays pay at every call), a
# primitive calls the library's own function of the same semantics, chosen once per namespace.
class _Native(NamedTuple):
    clip_min: Callable[[Array, float], Array]
    row_norms: Callable[[Array], Array]
    copy: Callable[[Array], Array]
    split_rows: Callable[[Array, list[int]], Sequence[Array]]
    row_dot: Callable[[Array, Array], Array]
    concat_rows: Callable[[list[Array]], Array]


_NATIVE: dict[str, _Native] = {}


def native(xp: Namespace) -> _Native:
    """The library's own functions behind the delegated primitives (found once, then cached)."""
    found = _NATIVE.get(xp.__name__)
    if found is None:
        if library(xp) == "torch":
            import torch

            found = _Native(
                lambda x, lower: torch.clamp(x, min=lower),
                lambda x: torch.linalg.vector_norm(x, dim=-1, keepdim=True),
                torch.clone,
                lambda x, sizes: x.split_with_sizes(sizes),  # torch.split's own checks cost more
                torch.linalg.vecdot,  # compat's goes through bmm
                torch.cat,  # compat's checks dtypes and devices first
            )
        elif library_name(xp) == "numpy":
            import numpy as np

            found = _Native(
                np.maximum,
                lambda x: np.sqrt(np.sum(x * x, axis=-1, keepdims=True)),
                np.copy,
                _slices,
                xp.vecdot,
                np.concatenate,
            )
        else:
            found = _Native(
                lambda x, lower: xp.clip(x, min=lower),
                lambda x: xp.linalg.vector_norm(x, axis=-1, keepdims=True),
                lambda x: x + 0.0,  # a new array that autograd and tracers follow
                _slices,
                xp.vecdot,
                lambda rows: xp.concat(rows, axis=0),
            )
        _NATIVE[xp.__name__] = found
    return found


def clip_min(xp: Namespace, x: Array, lower: float) -> Array:
    """``clip(x, min=lower)`` (NaN stays NaN), by the library's own function where cheaper."""
    return native(xp).clip_min(x, lower)


def row_norms(xp: Namespace, x: Array) -> Array:
    """``vector_norm`` over the last axis, kept (N, 1), by the library's own where cheaper."""
    return native(xp).row_norms(x)


def split_rows(xp: Namespace, x: Array, sizes: list[int]) -> Sequence[Array]:
    """``x`` cut along axis 0 into parts of ``sizes`` rows (views where the library has them):
    one call of torch's ``split``, where each slice costs about a microsecond."""
    return native(xp).split_rows(x, sizes)


def concat_rows(xp: Namespace, rows: list[Array]) -> Array:
    """``concat(rows, axis=0)`` of arrays of one dtype, by the library's own where cheaper."""
    return native(xp).concat_rows(rows)


def _slices(x: Array, sizes: list[int]) -> list[Array]:
    return [x[sum(sizes[:i]) : sum(sizes[: i + 1]), ...] for i in range(len(sizes))]


def row_dot(xp: Namespace, a: Array, b: Array) -> Array:
    """``vecdot`` over the last axis of real arrays of one dtype."""
    return native(xp).row_dot(a, b)


def as_array(xp: Namespace, x: Any) -> Array:
    """A 0-D array for a reduction's result: NumPy's reductions return scalars."""
    return xp.asarray(x) if traits(xp).scalar_reductions else x


def may_write(xp: Namespace, *xs: Array) -> bool:
    """Whether our own temporaries may be written over now, with values computed from ``xs``:
    the library's arrays are writeable, no transform watches, and none of ``xs`` is on an
    autograd tape (as each ``*_into`` primitive decides for its own array). A loop that
    accumulates in place asks once, before it starts."""
    found = traits(xp)
    return found.writeable and not found.watched() and all(_may_overwrite(xp, x) for x in xs)


def add_at(xp: Namespace, x: Array, index: int, y: Array) -> Array:
    """``x`` with ``y`` added to ``x[index, ...]``: in place where the library can (``x`` must
    be our own; neither it nor ``y`` on an autograd tape), else a new array."""
    if not (_may_overwrite(xp, x) and _may_overwrite(xp, y)):
        parts = [x[:index, ...], (x[index, ...] + y)[None, ...], x[index + 1 :, ...]]
        return xp.concat(parts, axis=0)
    x[index, ...] += y
    return x
