"""The cells of one direction (:mod:`._cells`) streamed over tiles, never holding the N x M
logits.

Anchors and shared candidates are cut into blocks of ``chunk`` rows, or all of them where there
are fewer (the last block zero-padded and masked); a row block meets its paired candidates and
its own positives whole, as they are its own. The forward keeps a running row maximum and sum
(online log-sum-exp, as in flash attention and Inf-CL; a second pass for ``positives="pairs"``);
the backward rebuilds each tile of responses from those O(N) statistics. Loops go through a
``scan(body, carry, xs)`` driver: a Python loop for eager backends, ``jax.lax.scan`` under JAX,
so the traced program does not grow with the number of blocks.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from . import _core, _siglip
from ._arrays import Scan, add_at, device, may_write
from ._blocks import logits, pull, push
from ._cells import (
    Problem,
    Saved,
    adjust,
    finish,
    first_pass,
    own_cells,
    paired_cells,
    response,
    row_weights,
    scale_rows,
    second_pass,
    shared_cells,
    start,
)
from ._rows import zeros
from ._targets import scale_term
from ._typing import Array, Namespace


def blocks(xp: Namespace, x: Array, chunk: int) -> Array:
    """``x`` with its leading axis padded to a multiple of its tile and split: (nb, tile, ...).

    The tile is ``chunk`` rows, but never more than there are (a ``chunk_size`` beyond the batch
    must not pad every tile to chunk x chunk), and at least 1. Axes of size 0 after the first
    are fine (no negatives).
    """
    shape = x.shape
    n = shape[0]
    chunk = min(chunk, n) or 1
    pad = -n % chunk
    if pad:
        zeros = xp.zeros((pad, *shape[1:]), dtype=x.dtype, device=device(x))
        x = xp.concat([x, zeros], axis=0)
    # the number of blocks spelled out: reshape cannot infer a -1 when the array is empty
    return xp.reshape(x, ((n + pad) // chunk, chunk, *shape[1:]))


def unblock(xp: Namespace, x: Array, n: int) -> Array:
    shape = x.shape
    return xp.reshape(x, (shape[0] * shape[1], *shape[2:]))[:n, ...]


def starts(xp: Namespace, n: int, chunk: int, like: Array) -> Array:
    """The first row of each of the blocks that :func:`blocks` cuts ``n`` rows into."""
    return xp.arange(0, n, min(chunk, n) or 1, device=device(like))


# From this many elements on, a loop's (M, D) gradient is accumulated in place (see collect);
# below, summing it anew per row block costs less than the writes, and the heap cannot
# fragment by much.
IN_PLACE_FROM = 1 << 18


def in_place(xp: Namespace, total: Array, *xs: Array) -> bool:
    """Whether :func:`collect` accumulates into ``total`` (our own) in place, given the arrays
    ``xs`` its parts are computed from."""
    return math.prod(total.shape) >= IN_PLACE_FROM and may_write(xp, *xs)


def collect(
    xp: Namespace, scan: Scan, body: Any, carry: Any, xs: Any, into: Any, writes: bool
) -> tuple[Any, tuple[Array, ...]]:
    """``scan(body, carry, xs)`` for a body that returns ``(carry, parts)``, one block of each
    part per step: the carry and each part's blocks (nb, ...) added to ``into`` (a tuple, or
    None for the stacked parts alone).

    ``writes`` (from :func:`in_place`, with ``into`` our own buffers): each block is added into
    its block of ``into`` as it comes, so a loop keeps no list of blocks, stacks nothing and
    makes no new (M, D) sum per step. Such arrays, made and freed among the tiles' temporaries,
    leave the C heap too fragmented for the next one, and the resident size grows with the
    number of tiles (glibc keeps the freed pages).
    """
    if not writes:
        carry, parts = scan(body, carry, xs)
        return carry, parts if into is None else tuple(map(operator.add, into, parts))
    step = iter(range(xs[0].shape[0]))  # an eager scan visits the blocks once, in order
    totals = list(into)

    def each(c: Any, x: Any) -> Any:
        c, parts = body(c, x)
        i = next(step)
        for j, part in enumerate(parts):
            totals[j] = add_at(xp, totals[j], i, part)
        return c, None

    carry, _ = scan(each, carry, xs)
    return carry, tuple(totals)


# The tiled execution ----------------------------------------------------------------------

# The Problem's fields with a row per anchor: a row block reads its own rows of them.
_ROW_FIELDS = (
    "labels",
    "paired",
    "paired_labels",
    "positive",
    "weight",
    "guide_anchor",
    "guide_paired",
    "guide_positive",
    "threshold",
)


def _row_blocks(
    xp: Namespace, p: Problem, scaled: Array, chunk: int, *extra: Array
) -> tuple[Any, ...]:
    """The per-row inputs of a scan over row blocks: the scaled anchors, the first row, the
    row fields of ``p`` where present, and ``extra``."""
    n = scaled.shape[0]
    xs = [blocks(xp, scaled, chunk), starts(xp, n, chunk, scaled)]
    for x in [getattr(p, name) for name in _ROW_FIELDS] + list(extra):
        if x is not None:
            xs.append(blocks(xp, x, chunk))
    return tuple(xs)


def _unpack(p: Problem, x: tuple[Any, ...]) -> tuple[Any, Any, Problem, list[Any]]:
    """``(scaled, row0, p_i, extra)`` of a row block: ``p_i`` is ``p`` with the block's rows
    of its row fields."""
    it = iter(x)
    scaled_i, row0 = next(it), next(it)
    mine = {name: next(it) for name in _ROW_FIELDS if getattr(p, name) is not None}
    return scaled_i, row0, p._replace(**mine), list(it)


def _key_blocks(xp: Namespace, p: Problem, chunk: int) -> tuple[Any, ...] | None:
    """The shared candidates in blocks, with their first column, labels and guide rows; None
    if none."""
    keys = p.shared
    if keys is None or keys.shape[0] == 0:
        return None
    xs = [blocks(xp, keys, chunk), starts(xp, keys.shape[0], chunk, keys)]
    for x in (p.shared_labels, p.labelled, p.guide_shared):
        if x is not None:
            xs.append(blocks(xp, x, chunk))
    return tuple(xs)


def _key_tile(xp: Namespace, p_i: Problem, scaled_i: Array, row0: Any, key: tuple[Any, ...]) -> Any:
    """Keys, logits and masks of one shared tile (``p_i``: the row block's problem)."""
    it = iter(key)
    keys, col0 = next(it), next(it)
    cy = next(it) if p_i.shared_labels is not None else None
    lab = next(it) if p_i.labelled is not None else None
    guide = next(it) if p_i.guide_shared is not None else None
    z = logits(xp, "shared", scaled_i, keys)
    g = None if guide is None else logits(xp, "shared", p_i.guide_anchor, guide)
    masks = shared_cells(xp, p_i, z, row0, col0, True, p_i.labels, cy, lab, g)
    return keys, adjust(xp, p_i, z, masks), masks


def _own_tiles(xp: Namespace, p_i: Problem, scaled_i: Array) -> list[Any]:
    """``(kind, block, logits, masks)`` of a row block's own blocks: paired and own positive."""
    out = []
    if p_i.paired is not None:
        z = logits(xp, "paired", scaled_i, p_i.paired)
        g = None
        if p_i.guide_paired is not None:
            g = logits(xp, "paired", p_i.guide_anchor, p_i.guide_paired)
        masks = paired_cells(xp, p_i, z, p_i.labels, p_i.paired_labels, g)
        out.append(("paired", p_i.paired, adjust(xp, p_i, z, masks), masks))
    if p_i.positive is not None:
        z = logits(xp, "own", scaled_i, p_i.positive)
        g = None
        if p_i.guide_positive is not None:
            g = logits(xp, "own", p_i.guide_anchor, p_i.guide_positive)
        masks = own_cells(xp, p_i, z, g)
        out.append(("own", p_i.positive, adjust(xp, p_i, z, masks), masks))
    return out


_SCANS: dict[str, Scan] = {}


def python_scan(xp: Namespace) -> Scan:
    """A ``jax.lax.scan`` look-alike for eager backends: a Python loop over the leading axis
    (made once per namespace)."""
    found = _SCANS.get(xp.__name__)
    if found is None:
        found = _SCANS[xp.__name__] = _python_scan(xp)
    return found


def _python_scan(xp: Namespace) -> Scan:
    def scan(body: Callable[..., Any], carry: Any, xs: tuple[Array, ...]) -> Any:
        ys = []
        for i in range(xs[0].shape[0]):
            carry, y = body(carry, tuple(x[i, ...] for x in xs))
            ys.append(y)
        if not ys or ys[0] is None:
            return carry, None
        return carry, tuple(xp.stack(column) for column in zip(*ys))

    return scan


def forward(
    xp: Namespace, p: Problem, scale: Any, chunk: int, scan: Scan | None
) -> tuple[Array, Saved]:
    """As :func:`._dense.forward`; the residuals are two O(N) statistics and the counts.
    ``scan`` drives the loops (None: :func:`python_scan`)."""
    n, scan = p.anchor.shape[0], scan or python_scan(xp)
    key_blocks = _key_blocks(xp, p, chunk)

    def each_tile(rows: tuple[Any, ...], visit: Any, carry: Any) -> Any:
        scaled_i, row0, p_i, _ = rows
        if key_blocks is not None:

            def key_block(c: Any, key: tuple[Any, ...]) -> Any:
                _, z, masks = _key_tile(xp, p_i, scaled_i, row0, key)
                return visit(c, z, masks), None

            carry, _ = scan(key_block, carry, key_blocks)
        for _, _, z, masks in _own_tiles(xp, p_i, scaled_i):
            carry = visit(carry, z, masks)
        return carry

    def row_block(_: None, x: tuple[Any, ...]) -> Any:
        rows = _unpack(p, x)
        p_i = rows[2]

        def first(c: Any, z: Array, masks: Any) -> Any:
            return first_pass(xp, p_i, c, z, masks, mine=True)

        def second(lse_negatives: Array, sums: Any) -> Any:
            def visit(c: Any, z: Array, masks: Any) -> Any:
                return second_pass(xp, p_i, lse_negatives, c, z, masks)

            return each_tile(rows, visit, sums)

        stats = each_tile(rows, first, start(xp, p, rows[0].shape[0], rows[0]))
        out, count, residual = finish(xp, p_i, stats, second)
        return None, (out, count, *residual)

    _, out = scan(row_block, None, _row_blocks(xp, p, p.anchor * scale, chunk))
    rows, count, first, second, *more = (unblock(xp, x, n) for x in out)
    # statistics beyond two (soft targets, the debiased estimator) as the columns of one array
    return rows, Saved(first, second, xp.stack(more, axis=-1) if more else None, count)


def backward(
    xp: Namespace,
    p: Problem,
    scale: Any,
    chunk: int,
    scan: Scan | None,
    saved: Saved,
    grad_rows: Array,
) -> tuple[Array, tuple[Any, ...], Array | None, Array | None]:
    """As :func:`._dense.backward`, rebuilding each tile of responses from the statistics."""
    n, scan = p.anchor.shape[0], scan or python_scan(xp)
    weight = row_weights(xp, saved.count, grad_rows, scale)
    scaled = p.anchor * scale
    key_blocks = _key_blocks(xp, p, chunk)
    grad_keys = xp.zeros_like(key_blocks[0]) if key_blocks is not None else None
    writes = grad_keys is not None and in_place(xp, grad_keys, scaled, weight)

    # each row's derivative in the scale beyond its logits' (margin, debiased clamp): summed
    # over its tiles' responses, with the row's gradient
    extra = not isinstance(scale, (int, float)) and (p.margin is not None or p.debias is not None)
    biased = _siglip.learned(p)  # each row's responses summed: the bias's derivative
    stats = [x for x in (saved.shared, saved.paired, saved.positive) if x is not None]

    def row_block(grad_keys: Any, x: tuple[Any, ...]) -> Any:
        scaled_i, row0, p_i, (anchor_i, weight_i, *residual) = _unpack(p, x)
        if len(residual) > 2:  # the columns of the further statistics
            residual = residual[:2] + [residual[2][:, j] for j in range(residual[2].shape[-1])]
        weighted_i = anchor_i * weight_i[:, None]
        pulled = xp.zeros_like(anchor_i)
        more = None
        if extra:
            more = scale_term(xp, p_i, tuple(residual))
            more = zeros(xp, anchor_i.shape[0], anchor_i) if more is None else more
        bias = zeros(xp, anchor_i.shape[0], anchor_i) if biased else None
        if key_blocks is not None:

            def key_block(c: Any, key: tuple[Any, ...]) -> Any:
                keys, z, masks = _key_tile(xp, p_i, scaled_i, row0, key)
                r = response(xp, p_i, tuple(residual), z, masks, mine=True)
                d = scale_rows(xp, p_i, r, masks) if extra else None
                b = c[2] if c[2] is None else c[2] + xp.sum(r, axis=-1)
                return (c[0] + r @ keys, c[1] if d is None else c[1] + d, b), (r.T @ weighted_i,)

            (pulled, more, bias), (grad_keys,) = collect(
                xp, scan, key_block, (pulled, more, bias), key_blocks, (grad_keys,), writes
            )
        outs = []
        for kind, block, z, masks in _own_tiles(xp, p_i, scaled_i):
            r = response(xp, p_i, tuple(residual), z, masks, mine=True)
            d = scale_rows(xp, p_i, r, masks) if extra else None
            more = more if d is None else more + d
            bias = bias if bias is None else bias + xp.sum(r, axis=-1)
            pulled = pulled + pull(kind, r, block)
            outs.append(push(kind, r, weighted_i))
        mores = tuple(x * weight_i for x in (more, bias) if x is not None)
        return grad_keys, (pulled * weight_i[:, None], *mores, *outs)

    xs = _row_blocks(xp, p, scaled, chunk, p.anchor, weight, *stats)
    into: tuple[Array, ...] | None = None
    if writes:  # the row blocks' gradients written into their place as they come
        into = tuple(
            xp.zeros_like(blocks(xp, x, chunk))
            for x in (p.anchor, *[weight] * (extra + biased), p.paired, p.positive)
            if x is not None
        )
    grad_keys, outs = collect(xp, scan, row_block, grad_keys, xs, into, writes)
    grad_anchor, *rest = (unblock(xp, g, n) for g in outs)
    more = rest.pop(0) if extra else None
    bias = rest.pop(0) if biased else None
    grad_shared = None
    if p.shared is not None:
        grad_shared = (
            xp.zeros_like(p.shared)
            if grad_keys is None
            else unblock(xp, grad_keys, p.shared.shape[0])
        )
    grad_paired = rest.pop(0) if p.paired is not None else None
    grad_positive = rest.pop(0) if p.positive is not None else None
    grad_scale = _core.scale_gradient(xp, p.anchor, grad_anchor, scale)
    if more is not None and grad_scale is not None:  # scale * grad * derivative per row
        grad_scale = grad_scale + xp.sum(more) / scale
    grad_bias = None if bias is None else xp.sum(bias) / scale
    return grad_anchor, (grad_shared, grad_paired, grad_positive), grad_scale, grad_bias
