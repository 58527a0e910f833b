"""Statistics of a row of logits, accumulated tile by tile: masked sums and counts, the online
log-sum-exp, and the stable forms of ``log``, ``softplus`` and ``sigmoid`` that the cells'
rules (:mod:`._cells`, :mod:`._targets`) share. A mask of None means "no such cell"."""

from __future__ import annotations

from typing import Any

from ._arrays import device, fill_where, subtract_exp
from ._typing import Array, Namespace


def zeros(xp: Namespace, n: int, like: Array) -> Array:
    return xp.zeros((n,), dtype=like.dtype, device=device(like))


def either(a: Any, b: Any) -> Any:
    """The union of two masks (None: empty)."""
    return a if b is None else b if a is None else a | b


def row_max(xp: Namespace, z: Array) -> Array:
    return xp.max(z, axis=-1) if z.shape[-1] else xp.full(z.shape[:-1], -xp.inf, dtype=z.dtype)


def safe_shift(xp: Namespace, top: Array) -> Array:
    """A shift for ``exp``: the row maximum, or 0 where nothing is kept (max -inf)."""
    return xp.where(top == -xp.inf, xp.zeros_like(top), top)


def hide(xp: Namespace, z: Array, hidden: Any, mine: bool) -> Array:
    """``z`` with the hidden cells -inf: written over ``z`` where the library can if ``mine``
    (a tile used once, as the tiled execution's are), else a new array."""
    if hidden is None:
        return z
    if mine:
        return fill_where(xp, z, xp.broadcast_to(hidden, z.shape), -xp.inf)
    return xp.where(hidden, -xp.inf, z)


def exp_of(xp: Namespace, z: Array, shift: Array, mine: bool) -> Array:
    """``exp(z - shift)``, over ``z`` if ``mine`` (see :func:`hide`)."""
    return subtract_exp(xp, z, shift) if mine else xp.exp(z - shift)


def lse_update(
    xp: Namespace, top: Array, total: Array, z: Array, hidden: Any, mine: bool, part: Any = None
) -> Any:
    """Online log-sum-exp: the running maximum and shifted sum, updated with the kept cells;
    with ``part``, one per block (``top`` and ``total`` then (n, K), the cells (n, K, c))."""
    if part is not None:
        ks = xp.arange(top.shape[-1], device=device(z))[:, None]
        hidden = either(None if hidden is None else hidden[:, None, :], part[..., None, :] != ks)
        z, mine = z[:, None, :], False
    kept = hide(xp, z, hidden, mine)
    new = xp.maximum(top, row_max(xp, kept))
    shift = safe_shift(xp, new)
    total = total * xp.exp(top - shift) + xp.sum(exp_of(xp, kept, shift[..., None], mine), axis=-1)
    return new, total


def masked_sum(xp: Namespace, mask: Any, x: Array) -> Array:
    if mask is None:
        return xp.zeros(x.shape[:-1], dtype=x.dtype, device=device(x))
    return xp.sum(xp.where(mask, x, 0.0), axis=-1)


def count(xp: Namespace, mask: Any, z: Array) -> Array:
    if mask is None:
        return xp.zeros(z.shape[:-1], dtype=z.dtype, device=device(z))
    return xp.astype(xp.count_nonzero(mask, axis=-1), z.dtype)


def log_of(xp: Namespace, total: Array) -> Array:
    """``log(total)`` of a shifted sum, 0 where the sum is empty (no warning, no -inf)."""
    return xp.log(xp.where(total > 0, total, xp.ones_like(total)))


def lse(xp: Namespace, top: Array, total: Array, empty: float = 0.0) -> Array:
    """``top + log(total)``; ``empty`` where nothing is kept (0: ``exp(-inf - lse)`` is 0)."""
    return xp.where(total > 0, safe_shift(xp, top) + log_of(xp, total), xp.full_like(total, empty))


def softplus(xp: Namespace, x: Array) -> Array:
    return xp.logaddexp(xp.zeros_like(x), x)


def sigmoid(xp: Namespace, x: Array) -> Array:
    return 1.0 / (1.0 + xp.exp(-x))
