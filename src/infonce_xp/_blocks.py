"""The three kinds of candidate block of a direction, and the products that score them.

"shared" (M, D): every anchor meets every row; "paired" (N, Mp, D): anchor i meets its own Mp
rows; "own" (N, D): anchor i meets row i, its own positive, a column of its own.
"""

from __future__ import annotations

from ._arrays import row_dot
from ._typing import Array, Namespace

BLOCKS = ("shared", "paired", "own")


def logits(xp: Namespace, kind: str, scaled: Array, block: Array) -> Array:
    """The scaled similarities of the anchors' rows with a block: (n, M), (n, Mp) or (n, 1)."""
    if kind == "shared":
        return scaled @ block.T
    if kind == "paired":
        return (block @ scaled[:, :, None])[:, :, 0]
    return row_dot(xp, scaled, block)[:, None]


def pull(kind: str, r: Array, block: Array) -> Array:
    """``sum_j r_ij x_j`` over a block's rows ``x``: the anchors' gradient, up to row weights."""
    if kind == "shared":
        return r @ block
    if kind == "paired":
        return (r[:, None, :] @ block)[:, 0, :]
    return r * block


def push(kind: str, r: Array, weighted: Array) -> Array:
    """A block's gradient from the responses and the weighted anchors (one row block's)."""
    if kind == "shared":
        return r.T @ weighted
    if kind == "paired":
        return r[:, :, None] * weighted[:, None, :]
    return r * weighted
