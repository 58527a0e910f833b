"""One direction's loss when cells of its logits are hidden or positive by rule (the recipes):
labels, same-view candidates, candidates in several blocks. Dense or tiled, with one set of tile
functions.

Anchor ``i`` meets its candidates in a *shared* block (M, D) and a *paired* block (its own Mp
rows). Each cell ``z_ij`` (a scaled cosine logit) is *hidden* (tile padding, the anchor itself
among same-view candidates, and with ``positives="own"`` a same-class candidate) or *kept*; a
kept cell is a *positive* (the own positive, and with "supcon" or "pairs" a same-class
candidate) or a *negative*. With ``P_i`` the positives, ``c_i = |P_i|``, ``lse_i`` the
log-sum-exp over the kept cells and ``lseN_i`` over the negatives:

- "own" and "supcon": ``l_i = lse_i - mean_P z``, computed as ``log S_i + (m_i - mean_P z)``
  (``m_i`` the row maximum, ``S_i`` the shifted sum): two terms >= 0, so nothing cancels;
- "pairs": ``l_i = sum_P softplus(lseN_i - z_ip)``.

A row without a positive has loss 0 and no gradient. The gradient of ``l_i`` with respect to
``z_ij`` is the *response* ``R_ij``:

- "own", "supcon": ``exp(z_ij - lse_i) - [j in P_i] / c_i`` over the kept cells;
- "pairs": ``sigma_i exp(z_ij - lseN_i)`` on negatives and ``-sigmoid(lseN_i - z_ij)`` on
  positives, with ``sigma_i`` the sum of ``sigmoid(lseN_i - z_ip)`` over the positives.

The dense path keeps ``R`` (one N x M matrix, as the plain path keeps its exps), so its backward
is two matrix products; the tiled path keeps O(N) statistics and rebuilds each tile of ``R``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _core
from ._arrays import (
    Scan,
    device,
    diagonal,
    fill_diagonal,
    fill_where,
    multiply_into,
    subtract_exp,
    subtract_into,
)
from ._typing import Array, Namespace


class Problem(NamedTuple):
    """One direction's arrays (unit rows in the compute dtype) and how its cells are classed."""

    anchor: Array  # (N, D)
    shared: Any  # None or (M, D)
    paired: Any  # None or (N, Mp, D)
    labels: Any  # (N,): the anchors' labels; None without labels
    shared_labels: Any  # (M,), or None
    labelled: Any  # (M,) bool: which shared candidates carry a label; None: all do
    paired_labels: Any  # (N, Mp); None: no paired candidate carries a label
    own: Any  # anchor i's own positive is shared column own + i; None: not in the shared block
    hide: Any  # anchor i itself is shared column hide + i (same-view); None: not there
    own_paired: bool  # column 0 of the paired block is the own positive
    positives: str  # "own", "supcon" or "pairs"


# Cells ------------------------------------------------------------------------------------


def _classify(xp: Namespace, positives: str, hidden: Any, own: Any, same: Any) -> tuple[Any, Any]:
    """``(hidden, positive)`` masks from the hidden, own-positive and same-class ones (each may
    be None: no such cell)."""
    if same is not None and own is not None:
        same = same & ~own  # the own positive is a positive, never an ignored same-class cell
    if same is not None and hidden is not None:
        same = same & ~hidden  # the anchor itself, or padding
    if positives == "own":
        if same is not None:
            hidden = same if hidden is None else hidden | same
        return hidden, own
    if same is None:
        return hidden, own
    return hidden, same if own is None else own | same


def shared_cells(
    xp: Namespace,
    p: Problem,
    z: Array,
    row0: Any,
    col0: Any,
    padded: bool,
    y: Any,
    cy: Any,
    lab: Any,
) -> tuple[Any, Any]:
    """Masks of one tile of shared logits (rows from ``row0``, columns from ``col0``; columns
    past the shared block are padding if ``padded``). ``y``, ``cy``, ``lab``: the tile's labels
    (or None)."""
    rows = xp.arange(z.shape[0], device=device(z))[:, None] + row0
    cols = xp.arange(z.shape[1], device=device(z))[None, :] + col0
    hidden = cols >= p.shared.shape[0] if padded else None
    if p.hide is not None:
        mine = cols == rows + p.hide
        hidden = mine if hidden is None else hidden | mine
    own = None if p.own is None else cols == rows + p.own
    same = None
    if y is not None and cy is not None:
        same = y[:, None] == cy[None, :]
        if lab is not None:
            same = same & lab[None, :]
    return _classify(xp, p.positives, hidden, own, same)


def paired_cells(xp: Namespace, p: Problem, z: Array, y: Any, py: Any) -> tuple[Any, Any]:
    """Masks of the paired logits (n, Mp) of some rows, with their labels (or None)."""
    own = None
    if p.own_paired:
        first = xp.arange(z.shape[1], device=device(z)) == 0
        own = xp.broadcast_to(first[None, :], z.shape)
    same = None if y is None or py is None else y[:, None] == py
    return _classify(xp, p.positives, None, own, same)


# Statistics of a row, accumulated tile by tile ---------------------------------------------


def _max(xp: Namespace, z: Array) -> Array:
    return xp.max(z, axis=-1) if z.shape[-1] else xp.full(z.shape[:-1], -xp.inf, dtype=z.dtype)


def _safe(xp: Namespace, top: Array) -> Array:
    """A shift for ``exp``: the row maximum, or 0 where nothing is kept (max -inf)."""
    return xp.where(top == -xp.inf, xp.zeros_like(top), top)


def _lse_update(xp: Namespace, top: Array, total: Array, z: Array, hidden: Any) -> Any:
    """Online log-sum-exp: the running maximum and shifted sum, updated with the kept cells."""
    kept = z if hidden is None else xp.where(hidden, -xp.inf, z)
    new = xp.maximum(top, _max(xp, kept))
    shift = _safe(xp, new)
    total = total * xp.exp(top - shift) + xp.sum(xp.exp(kept - shift[:, None]), axis=-1)
    return new, total


def _masked_sum(xp: Namespace, mask: Any, x: Array) -> Array:
    if mask is None:
        return xp.zeros(x.shape[:-1], dtype=x.dtype, device=device(x))
    return xp.sum(xp.where(mask, x, 0.0), axis=-1)


def _count(xp: Namespace, mask: Any, z: Array) -> Array:
    if mask is None:
        return xp.zeros(z.shape[:-1], dtype=z.dtype, device=device(z))
    return xp.astype(xp.count_nonzero(mask, axis=-1), z.dtype)


def _or(a: Any, b: Any) -> Any:
    return a if b is None else b if a is None else a | b


def first_pass(xp: Namespace, p: Problem, stats: tuple[Array, ...], z: Array, masks: Any) -> Any:
    """Update ``(top, total, positive sum, count)`` with one tile: over the kept cells for "own"
    and "supcon", over the negatives for "pairs"."""
    hidden, positive = masks
    top, total, zsum, count = stats
    if p.positives == "pairs":
        hidden = _or(hidden, positive)
    top, total = _lse_update(xp, top, total, z, hidden)
    if p.positives != "pairs":
        zsum = zsum + _masked_sum(xp, positive, z)
    return top, total, zsum, count + _count(xp, positive, z)


def _sigmoid(xp: Namespace, x: Array) -> Array:
    return 1.0 / (1.0 + xp.exp(-x))


def second_pass(
    xp: Namespace, lse_negatives: Array, stats: tuple[Array, Array], z: Array, positive: Any
) -> tuple[Array, Array]:
    """ "pairs": update ``(sum of the pair terms, sum of their sigmoids)`` with one tile."""
    if positive is None:
        return stats
    gap = lse_negatives[:, None] - z
    terms = _masked_sum(xp, positive, xp.logaddexp(xp.zeros_like(gap), gap))
    return stats[0] + terms, stats[1] + _masked_sum(xp, positive, _sigmoid(xp, gap))


def _log(xp: Namespace, total: Array) -> Array:
    """``log(total)`` of a shifted sum, 0 where the sum is empty (no warning, no -inf)."""
    return xp.log(xp.where(total > 0, total, xp.ones_like(total)))


def _lse(xp: Namespace, top: Array, total: Array, empty: float = 0.0) -> Array:
    """``top + log(total)``; ``empty`` where nothing is kept (0: ``exp(-inf - lse)`` is 0)."""
    return xp.where(total > 0, _safe(xp, top) + _log(xp, total), xp.full_like(total, empty))


def finish_rows(xp: Namespace, p: Problem, stats: tuple[Array, ...]) -> Any:
    """``own``/``supcon``: the loss rows, the row's pair count and the residual statistics."""
    top, total, zsum, count = stats
    has = count > 0
    per = zsum / xp.where(has, count, xp.ones_like(count))
    rows = xp.where(has, _log(xp, total) + (top - per), xp.zeros_like(total))
    return rows, count, (_lse(xp, top, total), count)


def response(xp: Namespace, p: Problem, residual: tuple[Array, ...], z: Array, masks: Any) -> Array:
    """One tile of ``R`` (dl_i / dz_ij; see the module docstring) from the row statistics."""
    hidden, positive = masks
    if p.positives == "pairs":
        lse_negatives, sigmas = residual
        negative = _or(hidden, positive)
        shifted = z - _safe(xp, lse_negatives)[:, None]
        out = xp.exp(shifted if negative is None else xp.where(negative, -xp.inf, shifted))
        out = out * sigmas[:, None]
        if positive is not None:
            pull = _sigmoid(xp, lse_negatives[:, None] - z)
            out = out - xp.where(positive, pull, xp.zeros_like(pull))
        return out
    lse, count = residual
    kept = z if hidden is None else xp.where(hidden, -xp.inf, z)
    out = xp.exp(kept - lse[:, None])
    if positive is not None:
        share = 1.0 / xp.where(count > 0, count, xp.ones_like(count))
        out = out - xp.where(positive, share[:, None], xp.zeros_like(out))
    return out


# Logits -----------------------------------------------------------------------------------


def shared_logits(scaled: Array, keys: Array) -> Array:
    return scaled @ keys.T


def paired_logits(scaled: Array, paired: Array) -> Array:
    return (paired @ scaled[:, :, None])[:, :, 0]


def zeros(xp: Namespace, n: int, like: Array) -> Array:
    return xp.zeros((n,), dtype=like.dtype, device=device(like))


# Dense ------------------------------------------------------------------------------------


def forward(
    xp: Namespace, p: Problem, scale: Any, chunk: int | None, scan: Scan
) -> tuple[Array, Array, tuple[Array, ...]]:
    """Loss rows (N,), positive counts (N,) and the residuals of one direction, all logits at
    once (``chunk`` and ``scan`` are for :mod:`._cells_tiled`'s signature)."""
    n = p.anchor.shape[0]
    scaled = p.anchor * scale
    if p.positives != "pairs" and p.paired is None and p.shared.shape[0] > 0:
        return _shared_only(xp, p, scaled)
    tiles = []  # (logits, masks) of the shared and the paired block
    if p.shared is not None:
        z = shared_logits(scaled, p.shared)
        tiles.append(
            (z, shared_cells(xp, p, z, 0, 0, False, p.labels, p.shared_labels, p.labelled))
        )
    if p.paired is not None:
        z = paired_logits(scaled, p.paired)
        tiles.append((z, paired_cells(xp, p, z, p.labels, p.paired_labels)))
    empty = zeros(xp, n, scaled)
    stats: Any = (empty - xp.inf, empty, empty, empty)
    for z, masks in tiles:
        stats = first_pass(xp, p, stats, z, masks)
    rows, count, residual = finish(xp, p, stats, lambda lse, sums: _second(xp, tiles, lse, sums))
    # Always three residuals (an empty one for an absent block), as the tiled path keeps.
    responses = [response(xp, p, residual, z, masks) for z, masks in tiles]
    if p.shared is None:
        responses.insert(0, count[:0])
    if p.paired is None:
        responses.append(count[:0])
    return rows, count, (*responses, count)


def _shared_only(
    xp: Namespace, p: Problem, scaled: Array
) -> tuple[Array, Array, tuple[Array, ...]]:
    """``forward`` for "own" and "supcon" with one shared block: the same rows and responses,
    in as few passes over the N x M logits as the plain path makes (the own positive and the
    anchor itself are strided writes, not masks; exps and responses overwrite the logits)."""
    z = shared_logits(scaled, p.shared)
    same = None
    if p.labels is not None and p.shared_labels is not None:
        same = p.labels[:, None] == p.shared_labels[None, :]
        if p.labelled is not None:
            same = same & p.labelled[None, :]
        for column in (p.own, p.hide):  # the own positive, the anchor: not same-class cells
            if column is not None:
                same = fill_diagonal(xp, same, column, False)
    n = z.shape[0]
    count = zeros(xp, n, z) + (0.0 if p.own is None else 1.0)
    own_logit = None if p.own is None else diagonal(xp, z, p.own)  # before z is written over
    zsum = zeros(xp, n, z) if own_logit is None else own_logit
    if same is not None and p.positives == "own":
        z = fill_where(xp, z, same, -xp.inf)
    elif same is not None:  # as 0/1 logits, later the responses' share: in place
        same = xp.astype(same, z.dtype)
        count = count + xp.sum(same, axis=-1)
        zsum = zsum + (z[:, None, :] @ same[:, :, None])[:, 0, 0]
    if p.hide is not None:  # after the sums: 0 * -inf is NaN
        z = fill_diagonal(xp, z, p.hide, -xp.inf)
    top = _max(xp, z)
    exps = subtract_exp(xp, z, _safe(xp, top)[:, None])
    total = xp.sum(exps, axis=-1)
    rows, count, _ = finish_rows(xp, p, (top, total, zsum, count))
    has = count > 0
    share = xp.where(has, 1.0 / xp.where(has, count, xp.ones_like(count)), xp.zeros_like(count))
    responses = multiply_into(xp, exps, (1.0 / xp.where(total > 0, total, 1.0))[:, None])
    if same is not None and p.positives == "supcon":
        responses = subtract_into(xp, responses, multiply_into(xp, same, share[:, None]))
    if own_logit is not None:  # exp(p - top) / total - 1 / count
        own = xp.exp(own_logit - _safe(xp, top)) / total - share
        responses = fill_diagonal(xp, responses, p.own, own)
    return rows, count, (responses, count[:0], count)


def _second(xp: Namespace, tiles: Any, lse_negatives: Array, sums: Any) -> Any:
    for z, (_, positive) in tiles:
        sums = second_pass(xp, lse_negatives, sums, z, positive)
    return sums


def finish(xp: Namespace, p: Problem, stats: Any, second: Any) -> Any:
    """Rows, counts and residual statistics from a row's first-pass statistics; "pairs" calls
    ``second(lse_negatives, sums)`` to run its second pass over the tiles."""
    if p.positives != "pairs":
        return finish_rows(xp, p, stats)
    top, total, _, count = stats
    lse_negatives = _lse(xp, top, total, -xp.inf)
    sums = second(lse_negatives, (xp.zeros_like(total), xp.zeros_like(total)))
    return sums[0], count, (lse_negatives, sums[1])


def row_weights(xp: Namespace, residuals: Any, grad_rows: Array, scale: Any) -> Array:
    """``scale * grad`` per row; 0 for a row without a positive (its loss is 0 whatever its
    candidates). The count is the last residual."""
    count = residuals[-1]
    return xp.where(count > 0, grad_rows, xp.zeros_like(grad_rows)) * scale


def backward(
    xp: Namespace,
    p: Problem,
    scale: Any,
    chunk: int | None,
    scan: Scan,
    residuals: tuple[Array, ...],
    grad_rows: Array,
) -> tuple[Array, Array | None, Array | None, Array | None]:
    """Gradients of ``sum(grad_rows * rows)`` for the anchors, the shared and the paired block,
    and the scale (None when a Python number): two products with the kept responses."""
    weight = row_weights(xp, residuals, grad_rows, scale)
    pulled = xp.zeros_like(p.anchor)
    grad_shared = grad_paired = None
    if p.shared is not None:
        r = residuals[0]
        pulled = pulled + r @ p.shared
        grad_shared = r.T @ (p.anchor * weight[:, None])
    if p.paired is not None:
        r = residuals[1]
        pulled = pulled + (r[:, None, :] @ p.paired)[:, 0, :]
        grad_paired = (r * weight[:, None])[:, :, None] * p.anchor[:, None, :]
    grad_anchor = pulled * weight[:, None]
    grad_scale = _core.scale_gradient(xp, p.anchor, grad_anchor, scale)
    return grad_anchor, grad_shared, grad_paired, grad_scale
