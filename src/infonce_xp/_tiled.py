"""One direction's loss rows and gradient streamed over blocks, never holding the N x M logits.

Queries and keys are cut into blocks of ``chunk`` rows, or all of them where there are fewer
(the last block zero-padded and masked). The forward keeps a running row maximum and sum
(online log-sum-exp, as in flash attention and Inf-CL); the backward recomputes each tile from
those O(N) statistics. Loops go through a ``scan(body, carry, xs)`` driver: a Python loop for
eager backends, ``jax.lax.scan`` under JAX, so the traced program does not grow with the number
of blocks.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from . import _core
from ._arrays import Scan, add_at, device, diagonal_mask, may_write, row_dot, subtract_exp
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


def masked_logits(
    xp: Namespace, scaled: Array, keys: Array, row0: Any, col0: Any, n_keys: int, offset: Any
) -> Array:
    """One tile of logits, with padded keys (and in-batch positives) set to -inf."""
    logits = scaled @ keys.T
    cols = xp.arange(keys.shape[0], device=device(keys)) + col0
    hidden = cols[None, :] >= n_keys
    if offset is not None:
        hidden = hidden | diagonal_mask(xp, logits, offset, row0, col0)
    return xp.where(hidden, -xp.inf, logits)


def forward(
    xp: Namespace,
    anchor: Array,
    positive: Array,
    candidates: Array,
    scale: Any,
    offset: Any,
    chunk: int,
    scan: Scan,
) -> tuple[Array, tuple[Array, ...]]:
    """Loss rows of one direction; the residuals are three (N,) vectors."""
    if candidates.ndim == 3:
        return _paired_forward(xp, anchor, positive, candidates, scale, chunk, scan)
    n, n_keys = anchor.shape[0], candidates.shape[0]
    scaled = anchor * scale
    positive_logit = row_dot(xp, scaled, positive)
    key_blocks = (blocks(xp, candidates, chunk), starts(xp, n_keys, chunk, candidates))

    def row_block(carry: None, x: tuple[Array, ...]) -> tuple[None, tuple[Array, Array]]:
        scaled_i, positive_i, row0 = x

        def key_block(stats: tuple[Array, Array], y: tuple[Array, ...]) -> Any:
            row_max, others = stats
            logits = masked_logits(xp, scaled_i, y[0], row0, y[1], n_keys, offset)
            new_max = xp.maximum(row_max, xp.max(logits, axis=-1))
            others = others * xp.exp(row_max - new_max)
            others = others + xp.sum(subtract_exp(xp, logits, new_max[:, None]), axis=-1)
            return (new_max, others), None

        stats, _ = scan(key_block, (positive_i, xp.zeros_like(positive_i)), key_blocks)
        return None, stats

    _, (row_max, others) = scan(
        row_block,
        None,
        (
            blocks(xp, scaled, chunk),
            blocks(xp, positive_logit, chunk),
            starts(xp, n, chunk, scaled),
        ),
    )
    row_max, others = unblock(xp, row_max, n), unblock(xp, others, n)
    rows, partition = _core.row_losses(xp, positive_logit - row_max, others)
    return rows, (row_max, others, partition)


def backward(
    xp: Namespace,
    anchor: Array,
    positive: Array,
    candidates: Array,
    scale: Any,
    offset: Any,
    chunk: int,
    scan: Scan,
    residuals: tuple[Array, ...],
    grad_rows: Array,
) -> tuple[Array, Array, Array, Array]:
    """Gradients as ``_core.backward``, recomputing each tile of logits."""
    if candidates.ndim == 3:
        return _paired_backward(xp, anchor, positive, candidates, scale, chunk, scan, grad_rows)
    row_max, others, partition = residuals
    n, n_keys = anchor.shape[0], candidates.shape[0]
    scaled = anchor * scale
    weight = grad_rows / partition * scale
    key_blocks = (blocks(xp, candidates, chunk), starts(xp, n_keys, chunk, candidates))
    grad_keys = xp.zeros_like(key_blocks[0])
    writes = in_place(xp, grad_keys, scaled, weight)

    def row_block(grad_keys: Array, x: tuple[Array, ...]) -> tuple[Array, tuple[Array]]:
        scaled_i, anchor_i, max_i, weight_i, row0 = x
        weighted_i = anchor_i * weight_i[:, None]

        def key_block(pulled: Array, y: tuple[Array, ...]) -> Any:
            logits = masked_logits(xp, scaled_i, y[0], row0, y[1], n_keys, offset)
            exps = subtract_exp(xp, logits, max_i[:, None])
            return pulled + exps @ y[0], (exps.T @ weighted_i,)

        pulled, (grad_keys,) = collect(
            xp, scan, key_block, xp.zeros_like(scaled_i), key_blocks, (grad_keys,), writes
        )
        return grad_keys, (pulled,)

    row_blocks = (
        blocks(xp, scaled, chunk),
        blocks(xp, anchor, chunk),
        blocks(xp, row_max, chunk),
        blocks(xp, weight, chunk),
        starts(xp, n, chunk, scaled),
    )
    into = (xp.zeros_like(row_blocks[0]),) if writes else None
    grad_keys, (pulled,) = collect(xp, scan, row_block, grad_keys, row_blocks, into, writes)
    return _core.finish(
        xp,
        anchor,
        positive,
        scale,
        weight,
        others,
        unblock(xp, pulled, n),
        unblock(xp, grad_keys, n_keys),
    )


# Paired negatives belong to their query: rows are independent, so blocks of queries (with their
# own M negatives) go through the all-at-once path; a block's logits are chunk x M, never more
# than its share of the negatives themselves.


def _paired_forward(
    xp: Namespace,
    anchor: Array,
    positive: Array,
    negatives: Array,
    scale: Any,
    chunk: int,
    scan: Scan,
) -> tuple[Array, tuple[Array, ...]]:
    def row_block(carry: None, x: tuple[Array, ...]) -> tuple[None, tuple[Array]]:
        a, b, c = x
        rows, _ = _core.forward(xp, a, b, c, scale, None)
        return None, (rows,)

    n = anchor.shape[0]
    _, (rows,) = scan(
        row_block, None, tuple(blocks(xp, t, chunk) for t in (anchor, positive, negatives))
    )
    return unblock(xp, rows, n), ()


def _paired_backward(
    xp: Namespace,
    anchor: Array,
    positive: Array,
    negatives: Array,
    scale: Any,
    chunk: int,
    scan: Scan,
    grad_rows: Array,
) -> tuple[Array, Array, Array, Array]:
    def row_block(grad_scale: Array, x: tuple[Array, ...]) -> Any:
        a, b, c, g = x
        _, residuals = _core.forward(xp, a, b, c, scale, None)
        da, db, dc, ds = _core.backward(xp, a, b, c, scale, residuals, g)
        return grad_scale if ds is None else grad_scale + ds, (da, db, dc)

    n = anchor.shape[0]
    xs = tuple(blocks(xp, t, chunk) for t in (anchor, positive, negatives, grad_rows))
    zero = xp.zeros((), dtype=anchor.dtype, device=device(anchor))
    grad_scale, grads = scan(row_block, zero, xs)
    da, db, dc = (unblock(xp, g, n) for g in grads)
    return da, db, dc, None if isinstance(scale, float) else grad_scale
