"""The cells of one direction (:mod:`._cells`) with all logits at once: the responses are kept,
so the backward is two matrix products per block."""

from __future__ import annotations

from typing import Any

from . import _blocks, _cells, _core, _rows, _siglip, _targets
from ._arrays import (
    diagonal,
    fill_diagonal,
    fill_where,
    multiply_into,
    subtract_exp,
    subtract_into,
    traits,
)
from ._cells import Problem, Saved
from ._typing import Array, Namespace


def forward(xp: Namespace, p: Problem, scale: Any) -> tuple[Array, Saved]:
    """Loss rows (N,) and the responses of one direction, all logits at once."""
    scaled = p.anchor * scale
    if _one_pass(p):
        return _shared_only(xp, p, scaled)
    tiles = []  # (kind, logits, masks) of each block
    if p.shared is not None:
        z = _blocks.logits(xp, "shared", scaled, p.shared)
        g = _guide(xp, "shared", p, p.guide_shared)
        y, cy, lab = p.labels, p.shared_labels, p.labelled
        tiles.append(("shared", z, _cells.shared_cells(xp, p, z, 0, 0, False, y, cy, lab, g)))
    if p.paired is not None:
        z = _blocks.logits(xp, "paired", scaled, p.paired)
        g = _guide(xp, "paired", p, p.guide_paired)
        tiles.append(("paired", z, _cells.paired_cells(xp, p, z, p.labels, p.paired_labels, g)))
    if p.positive is not None:
        z = _blocks.logits(xp, "own", scaled, p.positive)
        g = _guide(xp, "own", p, p.guide_positive)
        tiles.append(("own", z, _cells.own_cells(xp, p, z, g)))
    tiles = [(kind, _cells.adjust(xp, p, z, masks), masks) for kind, z, masks in tiles]
    if p.sigmoid is not None:  # cell by cell: each tile's loss and responses in one pass
        return _scored(xp, p, tiles)
    stats = _cells.start(xp, p, scaled.shape[0], scaled)
    # Each tile's exponentials of the first pass are kept for its responses (one pass where
    # three would recompute them), except where a compiler fuses element-wise work and would
    # rather recompute than hold them. The responses then read no logit, so the first pass
    # may write over them, but for "pairs" (its second pass reads them) and a log-sum-exp per
    # block (which keeps nothing).
    keeps = not traits(xp).fusing()
    mine = keeps and p.positives != "pairs" and p.parts is None
    kept: list[Any] = [{} if keeps else None for _ in tiles]
    for (_, z, masks), keep in zip(tiles, kept):
        stats = _cells.first_pass(xp, p, stats, z, masks, mine, keep)
    rows, count, residual = _cells.finish(
        xp, p, stats, lambda lse, sums: _second(xp, p, tiles, lse, sums)
    )
    # the logits' last use: each response is written over its tile where the library can
    # each row's derivative in the scale beyond its logits' (an array where the plan keeps one)
    extra = None
    if p.margin is not None or p.debias is not None:
        extra = _targets.scale_term(xp, p, residual)
        extra = _rows.zeros(xp, rows.shape[0], rows) if extra is None else extra
    learned = not isinstance(scale, (int, float))
    r = {}
    for (kind, z, masks), keep in zip(tiles, kept):
        r[kind] = _cells.response(xp, p, residual, z, masks, True, keep)
        d = _cells.scale_rows(xp, p, r[kind], masks) if learned else None
        extra = extra if d is None else extra + d
    return rows, Saved(r.get("shared"), r.get("paired"), r.get("own"), count, extra)


def _guide(xp: Namespace, kind: str, p: Problem, block: Any) -> Any:
    """The guide's similarities of a block, or None without a guide."""
    return None if block is None else _blocks.logits(xp, kind, p.guide_anchor, block)


def _one_pass(p: Problem) -> bool:
    """Whether ``_shared_only`` computes the direction: one shared block holds every cell, and
    the row's positives are all there (the own one, and same-class cells for "supcon")."""
    if p.paired is not None or p.positive is not None or p.shared.shape[0] == 0:
        return False
    if p.decoupled or p.hard is not None or p.unseen or p.threshold is not None:
        return False
    if p.margin is not None or p.debias is not None or _targets.soft(p) or p.sigmoid is not None:
        return False
    return p.positives == "supcon" or (p.positives == "own" and p.own is not None)


def _same_class(xp: Namespace, p: Problem) -> Any:
    """The same-class cells of the shared block, the own positive and the anchor excepted."""
    if p.labels is None or p.shared_labels is None:
        return None
    same = p.labels[:, None] == p.shared_labels[None, :]
    if p.labelled is not None:
        same = same & p.labelled[None, :]
    for column in (p.own, p.hide):
        if column is not None:
            same = fill_diagonal(xp, same, column, False)
    return same


def _shared_only(xp: Namespace, p: Problem, scaled: Array) -> tuple[Array, Saved]:
    """``forward`` for "own" (with the own positive in the block) and "supcon" with one shared
    block: the same rows and responses, in as few passes over the N x M logits as the plain
    path makes (the own positive and the anchor itself are strided writes, not masks; exps and
    responses overwrite the logits)."""
    z = _blocks.logits(xp, "shared", scaled, p.shared)
    same = _same_class(xp, p)
    n = z.shape[0]
    count = _rows.zeros(xp, n, z) + (0.0 if p.own is None else 1.0)
    own_logit = None if p.own is None else diagonal(xp, z, p.own)  # before z is written over
    zsum = _rows.zeros(xp, n, z) if own_logit is None else own_logit
    if same is not None and p.positives == "own":
        z = fill_where(xp, z, same, -xp.inf)
    elif same is not None:  # as 0/1 logits, later the responses' share: in place
        same = xp.astype(same, z.dtype)
        count = count + xp.sum(same, axis=-1)
        zsum = zsum + (z[:, None, :] @ same[:, :, None])[:, 0, 0]
    for column in (p.hide, p.own if p.positives == "own" else None):
        if column is not None:  # after the sums: 0 * -inf is NaN
            z = fill_diagonal(xp, z, column, -xp.inf)
    top = _rows.row_max(xp, z)
    exps = subtract_exp(xp, z, _rows.safe_shift(xp, top)[:, None])
    total = xp.sum(exps, axis=-1)
    scale_rows = 1.0 / xp.where(total > 0, total, 1.0)
    if p.positives == "own":  # the negatives' sum: R is sigma exp(z - lseN), -sigma at the own
        rows, _, (_, sigma) = _cells.finish_rows(xp, p, (top, total, zsum, count))
        responses = multiply_into(xp, exps, (sigma * scale_rows)[:, None])
        return rows, Saved(fill_diagonal(xp, responses, p.own, -sigma), None, None, count)
    rows, count, _ = _cells.finish_rows(xp, p, (top, total, zsum, count))
    has = count > 0
    share = xp.where(has, 1.0 / xp.where(has, count, xp.ones_like(count)), xp.zeros_like(count))
    responses = multiply_into(xp, exps, scale_rows[:, None])
    if same is not None:
        responses = subtract_into(xp, responses, multiply_into(xp, same, share[:, None]))
    if own_logit is not None:  # exp(p - top) / total - 1 / count
        own = xp.exp(own_logit - _rows.safe_shift(xp, top)) * scale_rows - share
        responses = fill_diagonal(xp, responses, p.own, own)
    return rows, Saved(responses, None, None, count)


def _scored(xp: Namespace, p: Problem, tiles: Any) -> tuple[Array, Saved]:
    """``forward`` for the sigmoid loss (:mod:`._siglip`): the responses written over the
    logits as the loss is summed."""
    rows = count = _rows.zeros(xp, tiles[0][1].shape[0], tiles[0][1])
    r = {}
    for kind, z, masks in tiles:
        loss, r[kind] = _siglip.score(xp, p, z, masks, True, True)
        rows, count = rows + loss, count + _rows.count(xp, masks[1], z)
    return rows, Saved(r.get("shared"), r.get("paired"), r.get("own"), count)


def _second(xp: Namespace, p: Problem, tiles: Any, lse_negatives: Array, sums: Any) -> Any:
    for _, z, masks in tiles:
        sums = _cells.second_pass(xp, p, lse_negatives, sums, z, masks)
    return sums


def backward(
    xp: Namespace, p: Problem, scale: Any, saved: Saved, grad_rows: Array
) -> tuple[Array, tuple[Any, ...], Array | None, Array | None]:
    """Gradients of ``sum(grad_rows * rows)`` for the anchors, the blocks (shared, paired, own;
    None where absent), the scale (None when a Python number) and the sigmoid loss's bias
    (None unless an array): two products per block."""
    weight = _cells.row_weights(xp, saved.count, grad_rows, scale)
    weighted = p.anchor * weight[:, None]
    pulled = xp.zeros_like(p.anchor)
    grads: list[Any] = []
    for kind, block, r in zip(_blocks.BLOCKS, (p.shared, p.paired, p.positive), saved[:3]):
        if block is not None:
            pulled = pulled + _blocks.pull(kind, r, block)
        grads.append(None if block is None else _blocks.push(kind, r, weighted))
    grad_anchor = pulled * weight[:, None]
    grad_scale = _core.scale_gradient(xp, p.anchor, grad_anchor, scale)
    grad_bias = None
    if _siglip.learned(p):  # each row's responses summed, times its gradient
        sums = [xp.sum(r, axis=-1) for r in saved[:3] if r is not None]
        grad_bias = xp.sum(_cells.row_weights(xp, saved.count, grad_rows, 1.0) * sum(sums))
    grad_scale = _cells.more_scale(xp, saved, grad_rows, grad_scale)
    return grad_anchor, tuple(grads), grad_scale, grad_bias
