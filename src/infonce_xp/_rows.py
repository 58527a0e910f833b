"""Masks of a tile's cells and the statistics of a row of logits, accumulated tile by tile:
masked sums and counts, the online log-sum-exp, and the stable forms of ``log``, ``softplus``
and ``sigmoid`` that the cells' rules (:mod:`._cells`, :mod:`._targets`) share.

A mask is None ("no such cell"), a boolean array, or a :class:`Diagonal`: the cells
``(i, offset + i)`` of a whole block (the own positive, the anchor itself), which reads, hides
and fills by strided access (``_arrays.fill_diagonal``) rather than by passes over N x M.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._arrays import (
    device,
    diagonal,
    diagonal_mask,
    fill_diagonal,
    fill_where,
    multiply_into,
    subtract_exp,
)
from ._typing import Array, Namespace


class Diagonal(NamedTuple):
    """The mask of the cells ``(i, offset + i)`` of an (n, m) tile ``like``."""

    offset: Any
    like: Array


def boolean(xp: Namespace, mask: Any) -> Any:
    """``mask`` as a boolean array (None stays None)."""
    if isinstance(mask, Diagonal):
        return diagonal_mask(xp, mask.like, mask.offset, 0, 0)
    return mask


def without(xp: Namespace, a: Any, b: Any) -> Any:
    """The cells of mask ``a`` not in ``b``."""
    if a is None or b is None:
        return a
    if _fills(a, b):  # a is a fresh array
        return fill_diagonal(xp, a, b.offset, False)
    return boolean(xp, a) & ~boolean(xp, b)


def _fills(a: Any, b: Any) -> bool:
    """Whether mask ``b`` is a diagonal of the whole array ``a`` (not one that broadcasts)."""
    return isinstance(b, Diagonal) and not isinstance(a, Diagonal) and a.shape == b.like.shape


def zeros(xp: Namespace, n: int, like: Array) -> Array:
    return xp.zeros((n,), dtype=like.dtype, device=device(like))


def either(xp: Namespace, a: Any, b: Any) -> Any:
    """The union of two masks (None: empty)."""
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, Diagonal) and not isinstance(b, Diagonal):
        a, b = b, a
    if _fills(a, b):
        return fill_diagonal(xp, a | a, b.offset, True)  # a copy: masks may be shared
    return boolean(xp, a) | boolean(xp, b)


def row_max(xp: Namespace, z: Array) -> Array:
    return xp.max(z, axis=-1) if z.shape[-1] else xp.full(z.shape[:-1], -xp.inf, dtype=z.dtype)


def safe_shift(xp: Namespace, top: Array) -> Array:
    """A shift for ``exp``: the row maximum, or 0 where nothing is kept (max -inf)."""
    return xp.where(top == -xp.inf, xp.zeros_like(top), top)


def hide(xp: Namespace, z: Array, hidden: Any, mine: bool, value: float = -float("inf")) -> Array:
    """``z`` with the hidden cells -inf (or ``value``): written over ``z`` where the library
    can if ``mine`` (a tile used once, as the tiled execution's are), else a new array."""
    if hidden is None:
        return z
    if isinstance(hidden, Diagonal):
        return fill_diagonal(xp, z if mine else z + 0.0, hidden.offset, value)
    if mine:
        return fill_where(xp, z, xp.broadcast_to(hidden, z.shape), value)
    return xp.where(hidden, value, z)


def subtract_where(xp: Namespace, x: Array, mask: Any, values: Array) -> Array:
    """``x - where(mask, values, 0)``, written over ``x`` (our own) where the library can;
    ``values`` one per row, or one number."""
    if mask is None:
        return x
    if isinstance(mask, Diagonal):
        return fill_diagonal(xp, x, mask.offset, diagonal(xp, x, mask.offset) - values)
    column = values[:, None] if getattr(values, "ndim", 0) == 1 else values
    return x - xp.where(mask, column, xp.zeros_like(x))


def negate_where(xp: Namespace, x: Array, mask: Any) -> Array:
    """``where(mask, -x, x)``, a strided write over ``x`` (our own) for a diagonal."""
    if mask is None:
        return x
    if isinstance(mask, Diagonal):
        return fill_diagonal(xp, x, mask.offset, -diagonal(xp, x, mask.offset))
    return xp.where(mask, -x, x)


def exp_of(xp: Namespace, z: Array, shift: Array, mine: bool) -> Array:
    """``exp(z - shift)``, over ``z`` if ``mine`` (see :func:`hide`), else over one new array
    (a fresh N x M array costs its pages' faults: one, not two)."""
    return subtract_exp(xp, z, shift) if mine else subtract_exp(xp, z - shift, None)


def exp_kept(
    xp: Namespace,
    z: Array,
    hidden: Any,
    shift: Array,
    mine: bool,
    kept: Any = None,
    times: Any = None,
) -> Array:
    """``exp(z - shift)`` (times the column ``times``, if given) on the cells not hidden, 0 on
    the hidden ones (``shift`` a column).

    ``kept``: the exponentials that a first pass made of the same cells, and their shift
    (``lse_update``'s ``keep``); they are rescaled, written over, instead of computed anew:
    one pass over the tile instead of three or four. Else over ``z`` if ``mine`` (see
    :func:`hide`).
    """
    if kept is not None:
        exps, at = kept
        factor = xp.exp(at - shift)
        return multiply_into(xp, exps, factor if times is None else factor * times)
    cells = hide(xp, z, hidden, mine)
    out = exp_of(xp, cells, shift, mine or cells is not z)
    return out if times is None else multiply_into(xp, out, times)


def lse_update(
    xp: Namespace,
    top: Array,
    total: Array,
    z: Array,
    hidden: Any,
    mine: bool,
    part: Any = None,
    keep: Any = None,
    name: str = "main",
    new: Any = None,
) -> Any:
    """Online log-sum-exp: the running maximum and shifted sum, updated with the kept cells;
    with ``part``, one per block (``top`` and ``total`` then (n, K), the cells (n, K, c)).

    ``keep`` (a dict, or None): without ``part``, the exponentials of the cells and their
    shift (a column) are kept there under ``name``, for :func:`exp_kept` (the dense execution
    keeps them; the tiled one streams). ``new``: the running maximum after this tile, where
    the caller knows it (else the kept cells' maximum is taken)."""
    if part is not None:
        ks = xp.arange(top.shape[-1], device=device(z))[:, None]
        hidden = boolean(xp, hidden)
        hidden = either(
            xp, None if hidden is None else hidden[:, None, :], part[..., None, :] != ks
        )
        z, mine = z[:, None, :], False
    kept = hide(xp, z, hidden, mine)
    mine = mine or kept is not z  # a new array of our own
    if new is None:
        new = xp.maximum(top, row_max(xp, kept))
    shift = safe_shift(xp, new)
    exps = exp_of(xp, kept, shift[..., None], mine)
    if keep is not None and part is None:
        keep[name] = exps, shift[..., None]
    return new, total * xp.exp(top - shift) + xp.sum(exps, axis=-1)


def masked_sum(xp: Namespace, mask: Any, x: Array) -> Array:
    if mask is None:
        return xp.zeros(x.shape[:-1], dtype=x.dtype, device=device(x))
    if isinstance(mask, Diagonal):
        return diagonal(xp, x, mask.offset)
    return xp.sum(xp.where(mask, x, 0.0), axis=-1)


def count(xp: Namespace, mask: Any, z: Array) -> Array:
    if mask is None:
        return xp.zeros(z.shape[:-1], dtype=z.dtype, device=device(z))
    if isinstance(mask, Diagonal):  # one cell per row
        return xp.ones(z.shape[:-1], dtype=z.dtype, device=device(z))
    return xp.astype(xp.count_nonzero(mask, axis=-1), z.dtype)


def log_of(xp: Namespace, total: Array) -> Array:
    """``log(total)`` of a shifted sum, 0 where the sum is empty (no warning, no -inf)."""
    return xp.log(xp.where(total > 0, total, xp.ones_like(total)))


def lse(xp: Namespace, top: Array, total: Array, empty: float = 0.0) -> Array:
    """``top + log(total)``; ``empty`` where nothing is kept (0: ``exp(-inf - lse)`` is 0)."""
    return xp.where(total > 0, safe_shift(xp, top) + log_of(xp, total), xp.full_like(total, empty))


def softplus(xp: Namespace, x: Array) -> Array:
    """``log(1 + e^x)``, against a 0-D zero (no second array of ``x``'s shape)."""
    return xp.logaddexp(xp.zeros((), dtype=x.dtype, device=device(x)), x)


def sigmoid(xp: Namespace, x: Array) -> Array:
    """``1 / (1 + e^{-x})`` without overflow: ``e^{-|x|}`` is at most 1."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0, e) / (1.0 + e)
