"""The ring exchange (``exchange="ring"``): this worker's queries meet every worker's keys one
worker's block at a time, each block met by the tiled execution of :mod:`._tiled`.

The blocks are passed round the ring by the gather's ``shift`` (to the next worker, from the
previous one), so no worker holds more than its own keys and one other block. The backward
passes the blocks round again, each with the gradient of its keys summed so far; after the
last step one more shift brings each gradient home. A row rule whose rows need no statistic
across blocks (the sigmoid loss) is all the ring supports: its rows are sums over blocks.
"""

from __future__ import annotations

from typing import Any

from . import _tiled
from ._cells import Problem, Saved
from ._typing import Array, Namespace, RingGather


def _held(p: Problem) -> tuple[Any, ...]:
    """What travels with a block: its keys, and their labels where there are."""
    return (p.shared,) if p.shared_labels is None else (p.shared, p.shared_labels)


def _at(p: Problem, held: tuple[Any, ...], step: int) -> Problem:
    """The problem of one step: the block held; the own positives only in the first (ours)."""
    labels = held[1] if len(held) > 1 else None
    return p._replace(shared=held[0], shared_labels=labels, own=p.own if step == 0 else None)


def _shift(ring: RingGather, held: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(ring.shift(x) for x in held)


def forward(
    xp: Namespace, p: Problem, scale: Any, chunk: int, scan: Any, ring: RingGather
) -> tuple[Array, Saved]:
    """As :func:`._tiled.forward` against every worker's keys; the statistics of the last
    block, and each row's positives over every block."""
    held, rows, count, saved = _held(p), None, None, None
    for step in range(ring.size()):
        if step:
            held = _shift(ring, held)
        part, saved = _tiled.forward(xp, _at(p, held, step), scale, chunk, scan)
        rows = part if rows is None else rows + part
        count = saved.count if count is None else count + saved.count
    return rows, saved._replace(count=count)  # type: ignore[union-attr,return-value]


def backward(
    xp: Namespace,
    p: Problem,
    scale: Any,
    chunk: int,
    scan: Any,
    saved: Saved,
    grad_rows: Array,
    ring: RingGather,
) -> tuple[Array, tuple[Any, ...], Any, Any]:
    """As :func:`._tiled.backward`; the keys' gradient is this worker's keys', summed over
    every worker's queries."""
    held = _held(p)
    travelling = xp.zeros_like(p.shared)
    total: list[Any] = [None, None, None]  # the anchors', the scale's and the bias's
    for step in range(ring.size()):
        if step:
            held, travelling = _shift(ring, held), ring.shift(travelling)
        at = _at(p, held, step)
        g_anchor, blocks, g_scale, g_bias = _tiled.backward(
            xp, at, scale, chunk, scan, saved, grad_rows
        )
        travelling = travelling + blocks[0]
        for i, g in enumerate((g_anchor, g_scale, g_bias)):
            if g is not None:
                total[i] = g if total[i] is None else total[i] + g
    home = ring.shift(travelling) if ring.size() > 1 else travelling
    return total[0], (home, None, None), total[1], total[2]
