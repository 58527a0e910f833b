"""The sigmoid loss's row rule (SigLIP, Zhai et al. 2023): each kept cell is scored on its own,
with no log-sum-exp over the row.

With ``x_ij = z_ij + b`` (``z`` the scaled logit, ``b`` the bias) and ``y_ij`` +1 on the
positives and -1 on the negatives, a row's loss is ``l_i = sum_j softplus(-y_ij x_ij)`` over
its kept cells, and its response ``dl_i/dz_ij = -y_ij sigmoid(-y_ij x_ij)``, which is
``sigmoid(x_ij) - [j in P_i]``. Both come from ``u = -y x``: the loss cell is
``softplus(u)`` and the response ``±exp(u - softplus(u))`` (``u - softplus(u) <= 0``: no
overflow at any logit). A hidden cell has ``u = -inf``, whose loss and response are 0. The
derivative in the bias is the sum of a row's responses.
"""

from __future__ import annotations

from typing import Any

from ._arrays import subtract_exp, subtract_into
from ._rows import count, hide, negate_where, softplus
from ._typing import Array, Namespace


def score(xp: Namespace, p: Any, z: Array, masks: Any, mine: bool, responses: bool) -> Any:
    """A tile's loss per row, and (if ``responses``) its responses, or None (written over
    ``z`` if ``mine``, else over one new array)."""
    hidden, positive = masks[0], masks[1]
    u = subtract_into(xp, z, -p.sigmoid) if mine else z + p.sigmoid
    u = hide(xp, negate_where(xp, u, positive), hidden, True)
    cells = softplus(xp, u)
    rows = xp.sum(cells, axis=-1)
    if not responses:
        return rows, None
    return rows, negate_where(xp, subtract_exp(xp, u, cells), positive)


def update(
    xp: Namespace, p: Any, stats: tuple[Array, ...], z: Array, masks: Any, mine: bool
) -> Any:
    """The first-pass statistics ``(top, total, zsum, count)`` with one tile: ``total`` sums
    the loss, ``count`` the positives (``top`` and ``zsum`` stay as they are)."""
    top, total, zsum, n = stats
    rows, _ = score(xp, p, z, masks, mine, False)
    return top, total + rows, zsum, n + count(xp, masks[1], z)


def learned(p: Any) -> bool:
    """Whether the bias is an array whose gradient is wanted."""
    return p.sigmoid is not None and not isinstance(p.sigmoid, (int, float))
