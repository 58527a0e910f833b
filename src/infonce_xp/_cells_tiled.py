"""The recipes' direction (:mod:`._cells`) streamed over tiles: online statistics in the
forward (a second pass for ``positives="pairs"``), each tile's responses rebuilt in the backward.
"""

from __future__ import annotations

from typing import Any

from . import _core
from ._arrays import Scan
from ._cells import (
    Problem,
    finish,
    first_pass,
    paired_cells,
    paired_logits,
    response,
    row_weights,
    second_pass,
    shared_cells,
    shared_logits,
    zeros,
)
from ._tiled import blocks, collect, in_place, starts, unblock
from ._typing import Array, Namespace


def _row_blocks(
    xp: Namespace, p: Problem, scaled: Array, chunk: int, *extra: Array
) -> tuple[Any, ...]:
    """The per-row inputs of a scan over row blocks (labels and paired block where present)."""
    n = scaled.shape[0]
    xs = [blocks(xp, scaled, chunk), starts(xp, n, chunk, scaled)]
    for x in (p.labels, p.paired, p.paired_labels, *extra):
        if x is not None:
            xs.append(blocks(xp, x, chunk))
    return tuple(xs)


def _unpack(p: Problem, x: tuple[Any, ...]) -> tuple[Any, ...]:
    """``(scaled, row0, labels, paired, paired labels, *extra)`` of a row block, None where absent."""
    it = iter(x)
    scaled_i, row0 = next(it), next(it)
    y = next(it) if p.labels is not None else None
    paired = next(it) if p.paired is not None else None
    py = next(it) if p.paired_labels is not None else None
    return (scaled_i, row0, y, paired, py, *it)


def _key_blocks(xp: Namespace, p: Problem, chunk: int) -> tuple[Any, ...]:
    keys = p.shared
    xs = [blocks(xp, keys, chunk), starts(xp, keys.shape[0], chunk, keys)]
    for x in (p.shared_labels, p.labelled):
        if x is not None:
            xs.append(blocks(xp, x, chunk))
    return tuple(xs)


def _key_tile(
    xp: Namespace, p: Problem, scaled_i: Array, row0: Any, y: Any, key: tuple[Any, ...]
) -> Any:
    """Logits and masks of one shared tile."""
    it = iter(key)
    keys, col0 = next(it), next(it)
    cy = next(it) if p.shared_labels is not None else None
    lab = next(it) if p.labelled is not None else None
    z = shared_logits(scaled_i, keys)
    return keys, z, shared_cells(xp, p, z, row0, col0, True, y, cy, lab)


def forward(xp: Namespace, p: Problem, scale: Any, chunk: int, scan: Scan) -> Any:
    """As :func:`._cells.forward`; the residuals are O(N) statistics."""
    n = p.anchor.shape[0]
    scaled = p.anchor * scale
    has_keys = p.shared is not None and p.shared.shape[0] > 0
    key_blocks: Any = _key_blocks(xp, p, chunk) if has_keys else None

    def each_tile(
        scaled_i: Array, row0: Any, y: Any, paired: Any, py: Any, visit: Any, carry: Any
    ) -> Any:
        if has_keys:

            def key_block(c: Any, key: tuple[Any, ...]) -> Any:
                _, z, masks = _key_tile(xp, p, scaled_i, row0, y, key)
                return visit(c, z, masks), None

            carry, _ = scan(key_block, carry, key_blocks)
        if paired is not None:
            z = paired_logits(scaled_i, paired)
            carry = visit(carry, z, paired_cells(xp, p, z, y, py))
        return carry

    def row_block(_: None, x: tuple[Any, ...]) -> Any:
        scaled_i, row0, y, paired, py = _unpack(p, x)
        empty = zeros(xp, scaled_i.shape[0], scaled_i)

        def first(c: Any, z: Array, masks: Any) -> Any:
            return first_pass(xp, p, c, z, masks)

        def second(lse_negatives: Array, sums: Any) -> Any:
            def visit(c: Any, z: Array, masks: Any) -> Any:
                return second_pass(xp, lse_negatives, c, z, masks[1])

            return each_tile(scaled_i, row0, y, paired, py, visit, sums)

        stats = each_tile(
            scaled_i, row0, y, paired, py, first, (empty - xp.inf, empty, empty, empty)
        )
        rows, count, residual = finish(xp, p, stats, second)
        return None, (rows, count, *residual)

    _, out = scan(row_block, None, _row_blocks(xp, p, scaled, chunk))
    rows, count, *residual = (unblock(xp, x, n) for x in out)
    return rows, count, (*residual, count)


def _backward(
    xp: Namespace, p: Problem, scale: Any, chunk: int, scan: Scan, residuals: Any, weight: Array
) -> Any:
    n = p.anchor.shape[0]
    scaled = p.anchor * scale
    has_keys = p.shared is not None and p.shared.shape[0] > 0
    key_blocks: Any = _key_blocks(xp, p, chunk) if has_keys else None
    stats = residuals[:2]
    grad_keys = xp.zeros_like(key_blocks[0]) if has_keys else xp.zeros((), dtype=scaled.dtype)
    writes = in_place(xp, grad_keys, scaled, weight)

    def row_block(grad_keys: Any, x: tuple[Any, ...]) -> Any:
        scaled_i, row0, y, paired, py, anchor_i, weight_i, *residual = _unpack(p, x)
        weighted_i = anchor_i * weight_i[:, None]
        pulled = xp.zeros_like(anchor_i)
        if has_keys:

            def key_block(pulled: Array, key: tuple[Any, ...]) -> Any:
                keys, z, masks = _key_tile(xp, p, scaled_i, row0, y, key)
                r = response(xp, p, tuple(residual), z, masks)
                return pulled + r @ keys, (r.T @ weighted_i,)

            pulled, (grad_keys,) = collect(
                xp, scan, key_block, pulled, key_blocks, (grad_keys,), writes
            )
        grad_paired_i = None
        if paired is not None:
            z = paired_logits(scaled_i, paired)
            r = response(xp, p, tuple(residual), z, paired_cells(xp, p, z, y, py))
            pulled = pulled + (r[:, None, :] @ paired)[:, 0, :]
            grad_paired_i = (r * weight_i[:, None])[:, :, None] * anchor_i[:, None, :]
        outs = (pulled * weight_i[:, None],) + (() if grad_paired_i is None else (grad_paired_i,))
        return grad_keys, outs

    xs = _row_blocks(xp, p, scaled, chunk, p.anchor, weight, *stats)
    into: tuple[Array, ...] | None = None
    if writes:  # the row blocks' gradients written into their place as they come
        into = (xp.zeros_like(xs[0]),)
        if p.paired is not None:
            into += (xp.zeros_like(blocks(xp, p.paired, chunk)),)
    grad_keys, outs = collect(xp, scan, row_block, grad_keys, xs, into, writes)
    grad_anchor = unblock(xp, outs[0], n)
    grad_paired = unblock(xp, outs[1], n) if p.paired is not None else None
    grad_shared = None
    if p.shared is not None:
        grad_shared = (
            unblock(xp, grad_keys, p.shared.shape[0]) if has_keys else xp.zeros_like(p.shared)
        )
    return grad_anchor, grad_shared, grad_paired


def backward(
    xp: Namespace,
    p: Problem,
    scale: Any,
    chunk: int,
    scan: Scan,
    residuals: tuple[Array, ...],
    grad_rows: Array,
) -> tuple[Array, Array | None, Array | None, Array | None]:
    """As :func:`._cells.backward`, rebuilding each tile."""
    weight = row_weights(xp, residuals, grad_rows, scale)
    grad_anchor, grad_shared, grad_paired = _backward(xp, p, scale, chunk, scan, residuals, weight)
    grad_scale = _core.scale_gradient(xp, p.anchor, grad_anchor, scale)
    return grad_anchor, grad_shared, grad_paired, grad_scale
