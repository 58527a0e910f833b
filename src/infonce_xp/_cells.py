"""One direction's loss when cells of its logits are hidden or positive by rule (the recipes):
labels, same-view candidates, candidates in several blocks. Dense or tiled, with one set of tile
functions.

Anchor ``i`` meets its candidates in a *shared* block (M, D) and a *paired* block (its own Mp
rows). Each cell ``z_ij`` (a scaled cosine logit) is *hidden* (tile padding, the anchor itself
among same-view candidates, and with ``positives="own"`` a same-class candidate) or *kept*; a
kept cell is a *positive* (the own positive, and with "supcon" or "pairs" a same-class
candidate) or a *negative*. With ``P_i`` the positives, ``c_i = |P_i|``, ``lse_i`` the
log-sum-exp over the kept cells and ``lseN_i`` over the negatives:

- "own": ``l_i = lse_i - z_ip = softplus(lseN_i - z_ip)`` (one positive): a near-perfect row
  (``lseN_i`` far below ``z_ip``) keeps its full relative precision, as the seed's math needs;
- "pairs": ``l_i = sum_P softplus(lseN_i - z_ip)``: "own" is its case of one positive;
- "supcon": ``l_i = lse_i - mean_P z``, computed as ``log S_i + (m_i - mean_P z)`` (``m_i`` the
  row maximum, ``S_i`` the shifted sum): two terms >= 0, so nothing cancels;
- decoupled ("own"): ``l_i = lseN_i - w_i z_ip`` (with ``Problem.parts``, one ``lseN`` per
  block, summed).

Other cell rules: hidden same-view and grouped cells (``Problem.unseen``), a guide's false
negatives (``Problem.threshold``), hardness weighting and the margin (:func:`adjust`); soft
targets (label smoothing, a teacher) and the debiased estimator score a row as
:mod:`._targets` says. A row without a positive has loss 0 and no gradient. The gradient of
``l_i`` in ``z_ij`` is the *response*:

- "supcon": ``exp(z_ij - lse_i) - [j in P_i] / c_i`` over the kept cells;
- "own", "pairs": ``sigma_i exp(z_ij - lseN_i)`` on negatives and ``-sigmoid(lseN_i - z_ij)``
  on positives, with ``sigma_i`` the sum of ``sigmoid(lseN_i - z_ip)`` over the positives;
- decoupled: ``exp(z_ij - lseN_i)`` on negatives (its block's), ``-w_i`` at the positive.

A new way to score a row changes :func:`first_pass`, :func:`finish` and :func:`response`, which
the dense and the tiled executions both run (and ``_dense._shared_only``, or its guard). A tile's
masks are ``(hidden, positive, part, hard, teacher)`` (see :func:`shared_cells`).

Anchor ``i`` may also have its own positive as a column of its own (``Problem.positive``, row
``i`` of an (N, D) array). The dense path keeps ``R`` (one N x M matrix per block, as the plain
path keeps its exps), so its backward is two matrix products per block; the tiled path keeps
O(N) statistics and rebuilds each tile of ``R``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _siglip, _targets
from ._arrays import device, row_dot, subtract_into
from ._rows import Diagonal, boolean, safe_shift, subtract_where, without, zeros
from ._rows import count as _count
from ._rows import either as _or
from ._rows import exp_kept as _exp_kept
from ._rows import log_of as _log
from ._rows import lse as _lse
from ._rows import lse_update as _lse_update
from ._rows import masked_sum as _masked_sum
from ._rows import sigmoid as _sigmoid
from ._rows import softplus as _softplus
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
    twin: Any  # anchor i's own positive, counted as ``positive``, is also shared column twin + i,
    # hidden there (the tiled execution: a tile's positives are then no mask); None: not there
    positive: Any  # (N, D): anchor i's own positive is row i, a column of its own; or None
    positives: str  # "own", "supcon" or "pairs"
    decoupled: Any = False  # the own positive out of the denominator: False, True or "blocks"
    parts: Any = None  # "blocks": the first column of each shared block (a paired block is
    # the last part); None: one log-sum-exp over all the row's cells
    weight: Any = None  # (N,): the decoupled positive term's weight per row; None: 1
    hardness: Any = None  # 1 + alpha / scale: the chosen cells' logits are multiplied by it
    hard: Any = None  # the chosen cells: ((start, stop, group size, row offset, rule) of shared
    # columns, see _directions._HARD; whether every paired cell), or None
    unseen: Any = ()  # further hidden shared cells: (start, stop, group size, row offset) each,
    # hiding row offset + i's group of columns in [start, stop) for anchor i
    guide_anchor: Any = None  # (N, Dg): a guide's anchors, whose similarities mask cells
    guide_shared: Any = None  # (M, Dg): the guide's shared candidates
    guide_paired: Any = None  # (N, Mp, Dg): the guide's paired candidates
    threshold: Any = None  # (N,): a cell whose guide similarity (without a guide: whose logit)
    # is above its row's threshold is hidden, the own positive excepted; None: no masking
    guide_positive: Any = None  # (N, Dg): the teacher's own positives, as ``positive``
    smoothing: float = 0.0  # label smoothing: the share of the row's target spread evenly
    teacher: Any = None  # the teacher's scale: the guide arrays are a teacher's (its anchors
    # times the scale), whose logits give the rows' targets; None: no teacher
    margin: Any = None  # (in logits, as given): the additive margin on the positives; or None
    debias: Any = None  # (tau, beta, -scale): the debiased estimator (see _targets); or None
    sigmoid: Any = None  # the sigmoid loss's bias (a number or a 0-D array): each cell scored
    # on its own (see _siglip); None: the log-sum-exp rules above


class Saved(NamedTuple):
    """What the backward of one direction needs: the dense path's responses per block (None
    where the block is absent), or the tiled path's two row statistics (``shared``, ``paired``
    then hold them and ``positive`` is None); and each row's positive count."""

    shared: Any
    paired: Any
    positive: Any
    count: Array
    extra: Any = None  # (N,): each row's derivative in the scale beyond its logits', or None


# Cells ------------------------------------------------------------------------------------


def _classify(xp: Namespace, positives: str, hidden: Any, own: Any, same: Any) -> tuple[Any, Any]:
    """``(hidden, positive)`` masks from the hidden, own-positive and same-class ones (each may
    be None: no such cell)."""
    same = without(xp, same, own)  # the own positive is a positive, never an ignored cell
    same = without(xp, same, hidden)  # the anchor itself, or padding
    if positives == "own":
        return _or(xp, hidden, same), own
    return hidden, _or(xp, own, same)


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
    g: Any = None,
) -> tuple[Any, ...]:
    """``(hidden, positive, part, hard, teacher)`` of one tile of shared logits (rows from
    ``row0``, columns from ``col0``; columns past the shared block are padding if ``padded``).
    ``y``, ``cy``, ``lab``: the tile's labels (or None); ``g``: the guide's (or teacher's)
    similarities of the tile (or None). ``part``: each column's block where each block has its
    own log-sum-exp (``decoupled="blocks"``), else None. ``hard``: the cells whose logits
    hardness weighs (see :func:`adjust`), or None. ``teacher``: the teacher's logits of the
    tile, or None."""
    rows = xp.arange(z.shape[0], device=device(z))[:, None] + row0
    cols = xp.arange(z.shape[1], device=device(z))[None, :] + col0
    # a whole block (the dense execution): the cells (i, offset + i) by their offset
    whole = not padded and isinstance(row0, int) and isinstance(col0, int) and row0 == col0 == 0

    def at(column: Any) -> Any:
        if column is None:
            return None
        return Diagonal(column, z) if whole else cols == rows + column

    hidden = cols >= p.shared.shape[0] if padded else None
    for column in (p.hide, p.twin):
        hidden = _or(xp, hidden, at(column))
    for first, stop, size, offset in p.unseen:
        mine = (cols >= first) & (cols < stop) & ((cols - first) // size == rows + offset)
        hidden = _or(xp, hidden, mine)
    own = at(p.own)
    hidden = _or(xp, hidden, _guided(xp, p, z, g, own))
    same = None
    if y is not None and cy is not None:
        same = y[:, None] == cy[None, :]
        if lab is not None:
            same = same & lab[None, :]
    part = None
    if p.parts is not None:  # the block of each column: how many blocks start at or before it
        part = xp.zeros(cols.shape, dtype=xp.int32, device=device(z))
        for first in p.parts[1:]:
            part = part + xp.astype(cols >= first, xp.int32)
    hidden, positive = _classify(xp, p.positives, hidden, own, same)
    return hidden, positive, part, _hard(xp, p, rows, cols, positive), _taught(p, g)


def _guided(xp: Namespace, p: Problem, z: Array, g: Any, own: Any) -> Any:
    """The cells that false-negative masking hides: a guide similarity (without a guide, the
    logit) above the row's threshold, the own positive excepted; None without masking."""
    if p.threshold is None:
        return None
    return without(xp, (z if g is None else g) > p.threshold[:, None], own)


def _hard(xp: Namespace, p: Problem, rows: Array, cols: Array, positive: Any) -> Any:
    """The shared cells whose logits hardness weighs (never a positive), or None."""
    if p.hard is None:
        return None
    hard = None
    for first, stop, size, offset, rule in p.hard[0]:
        chosen = (cols >= first) & (cols < stop)
        if rule != "all":  # a grouped block: is the column in the row's own group?
            mine = (cols - first) // size == rows + offset
            chosen = chosen & (mine if rule == "own" else ~mine)
        hard = _or(xp, hard, chosen)
    return without(xp, hard, positive)


def paired_cells(
    xp: Namespace, p: Problem, z: Array, y: Any, py: Any, g: Any = None
) -> tuple[Any, ...]:
    """Masks of the paired logits (n, Mp) of some rows, with their labels (or None), the
    guide's similarities (or None), their part and their hard cells (see ``shared_cells``)."""
    same = None if y is None or py is None else y[:, None] == py
    part = None if p.parts is None else len(p.parts)  # after the shared blocks
    hard = None
    if p.hard is not None and p.hard[1]:
        hard = xp.ones(z.shape, dtype=xp.bool, device=device(z))
    hidden, positive = _classify(xp, p.positives, _guided(xp, p, z, g, None), None, same)
    return hidden, positive, part, hard, _taught(p, g)


def own_cells(xp: Namespace, p: Problem, z: Array, g: Any = None) -> tuple[Any, ...]:
    """Masks of the own positives' column (n, 1): each a positive; with the teacher's logits
    of the column (``g``: its similarities, or None)."""
    return None, xp.ones(z.shape, dtype=xp.bool, device=device(z)), None, None, _taught(p, g)


def _taught(p: Problem, g: Any) -> Any:
    """A tile's teacher logits (its anchors carry the teacher's scale), or None."""
    return None if p.teacher is None else g


def adjust(xp: Namespace, p: Problem, z: Array, masks: Any) -> Array:
    """A tile's logits with hardness weighting and the margin, applied once where the tile is
    made (over ``z``, our own, where the library can).

    Hardness: ``z + alpha * s`` on the hard cells, ``s = z / scale`` their similarity, held
    constant in the gradient. The gradient needs nothing else: the responses are those of the
    weighted logits, and each logit's derivative in the similarity (and in the scale) is the
    unweighted one's. The margin: ``z - m * scale`` on the positives, whose derivative in the
    scale is ``s - m``: the engine adds ``-m`` times the positives' responses
    (:func:`scale_rows`)."""
    hard, positive = masks[3], masks[1]
    if hard is not None:
        z = xp.where(hard, z * p.hardness, z)
    if p.margin is not None:
        z = subtract_where(xp, z, positive, p.margin[0])
    return z


def first_pass(
    xp: Namespace,
    p: Problem,
    stats: tuple[Array, ...],
    z: Array,
    masks: Any,
    mine: bool = False,
    keep: Any = None,
) -> Any:
    """Update ``(top, total, positive sum, count)`` with one tile: the log-sum-exp over the
    kept cells for "supcon", over the negatives for "own" and "pairs" (``z`` is written over
    if ``mine``: see ``_rows.hide``). ``keep`` (a dict, or None): the tile's exponentials are
    kept there, by log-sum-exp, for :func:`response` (see ``_rows.exp_kept``)."""
    if p.sigmoid is not None:
        return _siglip.update(xp, p, stats, z, masks, mine)
    hidden, positive, part, _, g = masks
    top, total, zsum, count, *extra = stats
    if positive is not None:  # before z is written over
        zsum = zsum + _masked_sum(xp, positive, z)
        count = count + _count(xp, positive, z)
        if p.positives != "supcon" and not _targets.soft(p):
            hidden = _or(xp, hidden, positive)
    if extra:
        extra = list(_targets.update(xp, p, tuple(extra), z, hidden, g, mine, keep))
    if p.parts is not None and part is None:  # the own positives' column: hidden anyway
        part = 0
    if isinstance(part, int):  # a paired block: a part of its own
        part = xp.full((1, z.shape[-1]), part, dtype=xp.int32, device=device(z))
    tilted = _targets.tilt(xp, p, z, mine)
    mine = mine or tilted is not z
    new = None if part is not None else _targets.tilted_top(p, extra)
    top, total = _lse_update(xp, top, total, tilted, hidden, mine, part, keep, new=new)
    return top, total, zsum, count, *extra


def second_pass(
    xp: Namespace, p: Problem, lse_negatives: Array, stats: Any, z: Array, masks: Any
) -> tuple[Array, Array]:
    """ "pairs": update ``(sum of the pair terms, sum of their sigmoids)`` with one tile
    (positives only: hardness never weighs them)."""
    positive = masks[1]
    if positive is None:
        return stats  # type: ignore[no-any-return]
    positive = boolean(xp, positive)
    gap = lse_negatives[:, None] - z
    terms = _masked_sum(xp, positive, _softplus(xp, gap))
    return stats[0] + terms, stats[1] + _masked_sum(xp, positive, _sigmoid(xp, gap))


def finish_rows(xp: Namespace, p: Problem, stats: tuple[Array, ...]) -> Any:
    """ "own"/"supcon": the loss rows, the row's positive count and the residual statistics."""
    if p.sigmoid is not None:  # the loss summed cell by cell; the responses need no statistic
        top, total, _, count = stats
        return total, count, (top, total)
    if _targets.soft(p) or p.debias is not None:
        return _targets.finish(xp, p, stats)
    top, total, zsum, count = stats
    has = count > 0
    if p.decoupled is not False:  # LSE(negatives) - w z_p, an empty block's LSE taken as 0
        lse = _lse(xp, top, total)
        negatives = lse if lse.ndim == 1 else xp.sum(lse, axis=-1)
        w = xp.ones_like(zsum) if p.weight is None else p.weight
        return xp.where(has, negatives - w * zsum, xp.zeros_like(zsum)), count, (lse, w)
    if p.positives == "own":  # one positive: zsum is its logit
        lse_negatives = _lse(xp, top, total, -xp.inf)
        gap = lse_negatives - zsum
        rows = xp.where(has, _softplus(xp, gap), xp.zeros_like(gap))
        sigma = xp.where(has, _sigmoid(xp, gap), xp.zeros_like(gap))
        return rows, count, (lse_negatives, sigma)
    per = zsum / xp.where(has, count, xp.ones_like(count))
    rows = xp.where(has, _log(xp, total) + (top - per), xp.zeros_like(total))
    return rows, count, (_lse(xp, top, total), count)


def response(
    xp: Namespace,
    p: Problem,
    residual: tuple[Array, ...],
    z: Array,
    masks: Any,
    mine: bool = False,
    kept: Any = None,
) -> Array:
    """One tile of ``R`` (dl_i / dz_ij; see the module docstring) from the row statistics
    (written over ``z`` if ``mine``: see ``_rows.hide``); ``kept``: :func:`first_pass`'s
    ``keep`` of this tile (its exponentials are then written over), or None."""
    if p.sigmoid is not None:
        return _siglip.score(xp, p, z, masks, mine, True)[1]
    hidden, positive, part, _, g = masks
    kept = kept or {}
    if _targets.soft(p) or p.debias is not None:
        return _targets.response(xp, p, residual, z, (hidden, positive), g, mine, kept)
    main = kept.get("main")
    if p.decoupled is not False:  # exp(z - LSE) on the negatives, -w at the positive
        lse, w = residual
        out = _exp_kept(xp, z, _or(xp, hidden, positive), _part_shift(xp, lse, part), mine, main)
        return subtract_where(xp, out, positive, w)
    if p.positives != "supcon":
        lse_negatives, sigmas = residual
        pull = None
        if positive is not None and p.positives == "pairs":  # before z is written over
            pull = xp.where(boolean(xp, positive), _sigmoid(xp, lse_negatives[:, None] - z), 0.0)
        shift = safe_shift(xp, lse_negatives)[:, None]
        out = _exp_kept(xp, z, _or(xp, hidden, positive), shift, mine, main, sigmas[:, None])
        if pull is not None:
            return subtract_into(xp, out, pull)
        return subtract_where(xp, out, positive, sigmas)  # "own": its one positive's sigma
    lse, count = residual
    out = _exp_kept(xp, z, hidden, lse[:, None], mine, main)
    share = 1.0 / xp.where(count > 0, count, xp.ones_like(count))
    return subtract_where(xp, out, positive, share)


def vmf_weights(xp: Namespace, anchor: Array, positive: Array, sigma: float) -> Array:
    """DCLW's weights of the decoupled positive terms: ``2 - N softmax_i(s_ii / sigma)`` over
    the N rows, ``s_ii`` the similarity of row i with its own positive (Yeh et al. 2022)."""
    s = row_dot(xp, anchor, positive) / sigma
    e = xp.exp(s - xp.max(s))
    return 2.0 - s.shape[0] * (e / xp.sum(e))


def _part_shift(xp: Namespace, lse: Array, part: Any) -> Array:
    """Each cell's log-sum-exp: the row's, or (``lse`` (n, K)) that of the cell's ``part``."""
    if lse.ndim == 1:
        return safe_shift(xp, lse)[:, None]
    lse = safe_shift(xp, lse)
    if isinstance(part, int):
        return lse[:, part : part + 1]
    shift = lse[:, :1]
    for k in range(1, lse.shape[-1] if part is not None else 1):
        shift = xp.where(part == k, lse[:, k : k + 1], shift)
    return shift


def start(xp: Namespace, p: Problem, n: int, like: Array) -> tuple[Array, ...]:
    """The statistics of rows that have met no cell yet: the running maximum and sum (n, K)
    with a log-sum-exp per block (``p.parts``), else (n,); the positives' sum and count."""
    empty = zeros(xp, n, like)
    top = empty
    if p.parts is not None:
        k = len(p.parts) + (p.paired is not None)
        top = xp.zeros((n, k), dtype=like.dtype, device=device(like))
    return top - xp.inf, xp.zeros_like(top), empty, empty, *_targets.start(xp, p, n, like)


def finish(xp: Namespace, p: Problem, stats: Any, second: Any) -> Any:
    """Rows, counts and residual statistics from a row's first-pass statistics; "pairs" calls
    ``second(lse_negatives, sums)`` to run its second pass over the tiles."""
    if p.positives != "pairs":
        return finish_rows(xp, p, stats)
    top, total, _, count, *_ = stats
    lse_negatives = _lse(xp, top, total, -xp.inf)
    sums = second(lse_negatives, (xp.zeros_like(total), xp.zeros_like(total)))
    return sums[0], count, (lse_negatives, sums[1])


def scale_rows(xp: Namespace, p: Problem, r: Array, masks: Any) -> Any:
    """A tile's part of each row's derivative in the scale beyond its logits': the margin's
    ``-m`` times the tile's positives' responses ``r``; None without a margin."""
    if p.margin is None or masks[1] is None:
        return None
    return _masked_sum(xp, masks[1], r) * -p.margin[1]


def more_scale(xp: Namespace, saved: Saved, grad_rows: Array, grad_scale: Any) -> Any:
    """The scale's gradient with the rows' derivatives beyond their logits' (``saved.extra``)."""
    if grad_scale is None or saved.extra is None:
        return grad_scale
    return grad_scale + xp.sum(row_weights(xp, saved.count, grad_rows, 1.0) * saved.extra)


def row_weights(xp: Namespace, count: Array, grad_rows: Array, scale: Any) -> Array:
    """``scale * grad`` per row; 0 for a row without a positive (its loss is 0 whatever its
    candidates)."""
    return xp.where(count > 0, grad_rows, xp.zeros_like(grad_rows)) * scale
