"""Rows scored against targets other than the one-hot positive, and the debiased estimator of
a row's negatives: the statistics each keeps tile by tile, its rows and its responses. The
rules of :mod:`._cells` call these where a :class:`._cells.Problem` asks for them.

*Soft targets* (``label_smoothing`` e, a teacher): the row's log-sum-exp runs over all its
kept cells ``C_i`` (``K_i`` of them), the positives among them, and

    l_i = LSE_i - sum_c t_ic z_ic,    t_ic = (1 - e) b_ic + e / K_i,

with ``b_ic = [c in P_i] / |P_i|``, or a teacher's ``softmax_{C_i}(g_i)``, ``g`` its logits.
Kept: the sum of the kept logits and ``K_i``; with a teacher, its online log-sum-exp and the sum
of ``exp(g - max) z``. Computed as ``log S_i + (m_i - sum t z)`` (``m_i`` the row maximum, ``S_i``
the shifted sum), as "supcon" is. The response is ``exp(z - LSE_i) - t`` on the kept cells.

*Debiased* (Chuang et al. 2020; ``tau``) with *hard-negative reweighting* (Robinson et al. 2021;
``beta``), one positive ``p`` per row and ``Q_i`` negatives, in log space:
``log S_i = log Q_i + A_i - B_i`` with ``A_i = LSE((1 + beta) z_N)`` (the row's running
log-sum-exp, over its negatives' tilted logits) and ``B_i = LSE(beta z_N)``;
``L_i = max(log(S_i - tau Q_i e^{z_p}) - log(1 - tau), log Q_i - scale)`` and
``l_i = softplus(L_i - z_p)``. Clamped rows (the second term) have no gradient through the
negatives; the clamp's ``-scale`` gives the scale a gradient of its own (:func:`scale_term`).
"""

from __future__ import annotations

import math
from typing import Any

from ._arrays import multiply_into, subtract_into, subtract_product
from ._rows import (
    count,
    either,
    exp_kept,
    exp_of,
    hide,
    log_of,
    lse,
    lse_update,
    row_max,
    safe_shift,
    sigmoid,
    softplus,
    subtract_where,
    zeros,
)
from ._typing import Array, Namespace


def soft(p: Any) -> bool:
    """Whether the rows of ``p`` have soft targets (their log-sum-exp then keeps positives)."""
    return bool(p.smoothing) or p.teacher is not None


def start(xp: Namespace, p: Any, n: int, like: Array) -> tuple[Array, ...]:
    """The statistics beyond the row's log-sum-exp, positives' sum and count, of rows that have
    met no cell: soft targets' kept sum and count (and a teacher's maximum, sum and weighted
    logits), or the debiased estimator's ``B`` (maximum, sum) and negatives' count."""
    empty = zeros(xp, n, like)
    if soft(p):
        return (empty, empty) + (() if p.teacher is None else (empty - xp.inf, empty, empty))
    if p.debias is not None:
        return (empty - xp.inf, empty, empty) if p.debias[1] else (empty,)
    return ()


def tilt(xp: Namespace, p: Any, z: Array, mine: bool) -> Array:
    """The logits that the row's running log-sum-exp sums: ``(1 + beta) z`` when debiased
    (written over ``z`` if ``mine``)."""
    if p.debias is None or not p.debias[1]:
        return z
    return multiply_into(xp, z, 1.0 + p.debias[1]) if mine else z * (1.0 + p.debias[1])


def tilted_top(p: Any, extra: Any) -> Any:
    """The running maximum of the tilted logits ``(1 + beta) z``, from that of ``beta z`` over
    the same cells (:func:`update`'s, given as ``extra``): one pass fewer; None elsewhere."""
    if p.debias is None or not p.debias[1]:
        return None
    return extra[0] * ((1.0 + p.debias[1]) / p.debias[1])


def update(
    xp: Namespace,
    p: Any,
    extra: tuple[Array, ...],
    z: Array,
    hidden: Any,
    g: Any,
    mine: bool,
    keep: Any,
) -> tuple[Array, ...]:
    """:func:`start`'s statistics updated with a tile of logits ``z`` (not written over), its
    hidden cells (with the positives for the debiased rows: those count negatives) and the
    teacher's logits ``g`` (or None; written over if ``mine``). ``keep`` (a dict, or None):
    the exponentials of ``beta z`` (debiased) or of the teacher's logits are kept there, as
    ``_rows.lse_update`` keeps them."""
    n_kept = z.shape[-1] - count(xp, hidden, z)
    if p.debias is not None:
        if not p.debias[1]:
            return (extra[0] + n_kept,)
        top, total = lse_update(
            xp, extra[0], extra[1], z * p.debias[1], hidden, True, keep=keep, name="more"
        )
        return top, total, extra[2] + n_kept
    cells = hide(xp, z, hidden, False, 0.0)  # the kept logits, 0 elsewhere
    out = (extra[0] + xp.sum(cells, axis=-1), extra[1] + n_kept)
    if p.teacher is None:
        return out
    top, total, weighted = extra[2:]  # the teacher's online log-sum-exp, and sum exp(g) z
    kept = hide(xp, g, hidden, mine)
    new = xp.maximum(top, row_max(xp, kept))
    shift = safe_shift(xp, new)
    e = exp_of(xp, kept, shift[:, None], mine or kept is not g)
    if keep is not None:
        keep["more"] = e, shift[:, None]
    rescale = xp.exp(top - shift)
    total = total * rescale + xp.sum(e, axis=-1)
    # sum_j e_ij z_ij as N dot products: no N x M product is written
    weighted = weighted * rescale + (e[:, None, :] @ cells[:, :, None])[:, 0, 0]
    return (*out, new, total, weighted)


def finish(xp: Namespace, p: Any, stats: tuple[Array, ...]) -> Any:
    """The loss rows, the positive counts and the residual statistics of :func:`response`."""
    top, total, zsum, n_pos, *extra = stats
    has = n_pos > 0
    if p.debias is not None:
        return _debiased(xp, p, stats)
    e = float(p.smoothing)
    kall = extra[1]
    if p.teacher is None:
        aim = zsum / xp.where(has, n_pos, xp.ones_like(n_pos))
        more: tuple[Array, ...] = (n_pos,)
    else:
        aim = extra[4] / xp.where(extra[3] > 0, extra[3], xp.ones_like(extra[3]))
        more = (lse(xp, extra[2], extra[3]),)
    if e:
        aim = (1.0 - e) * aim + e * extra[0] / xp.where(kall > 0, kall, xp.ones_like(kall))
    rows = log_of(xp, total) + (safe_shift(xp, top) - aim)
    rows = xp.where(has, rows, xp.zeros_like(rows))
    return rows, n_pos, (lse(xp, top, total), kall, *more)


def response(
    xp: Namespace,
    p: Any,
    residual: tuple[Array, ...],
    z: Array,
    masks: Any,
    g: Any,
    mine: bool,
    kept: Any,
) -> Array:
    """One tile of ``dl_i / dz_ij`` from :func:`finish`'s residual (see the module docstring);
    ``z`` with its margin and hardness, written over if ``mine``; ``masks`` its hidden and
    positive cells; ``kept`` the first pass's exponentials of the tile (a dict, maybe empty:
    see ``_rows.exp_kept``)."""
    if p.debias is not None:
        return _debiased_response(xp, p, residual, z, masks, mine, kept)
    hidden, positive = masks
    row_lse, kall, more = residual
    e = float(p.smoothing)
    teacher = factor = None
    if p.teacher is not None:  # (1 - e) softmax(g) on the kept cells (g's last use)
        shift = safe_shift(xp, more)[:, None] - math.log1p(-e)
        if "more" in kept:  # the first pass's exps, rescaled as they are subtracted
            teacher, at = kept["more"]
            factor = xp.exp(at - shift)
        else:
            teacher = exp_kept(xp, g, hidden, shift, True)
    out = exp_kept(xp, z, hidden, safe_shift(xp, row_lse)[:, None], mine, kept.get("main"))
    if e:  # e / K on the kept cells
        out = subtract_into(xp, out, e / xp.where(kall > 0, kall, xp.ones_like(kall))[:, None])
        out = hide(xp, out, hidden, True, 0.0)
    if factor is not None:
        return subtract_product(xp, out, teacher, factor)
    if teacher is not None:
        return subtract_into(xp, out, teacher)
    return subtract_where(
        xp, out, positive, (1.0 - e) / xp.where(more > 0, more, xp.ones_like(more))
    )


def _debiased(xp: Namespace, p: Any, stats: tuple[Array, ...]) -> Any:
    """The debiased rows, counts and residual ``(A, B, c1, pull, scale term)``: ``c1`` the
    factor of each negative's response, ``pull`` the positive's (see the module docstring)."""
    top, total, z_p, n_pos, *extra = stats
    tau, beta, floor = p.debias
    q = extra[-1]
    has = (n_pos > 0) & (q > 0)
    log_q = log_of(xp, q)
    log_s = log_q + lse(xp, top, total) - (lse(xp, extra[0], extra[1]) if beta else log_q)
    raw = log_s
    if tau:  # log(S - tau Q e^{z_p}): log S + log(1 - e^x), x = log(tau Q e^{z_p} / S) < 0
        x = math.log(tau) + log_q + z_p - log_s
        below = x < 0  # elsewhere the clamp binds
        x = xp.where(below, x, xp.full_like(x, -1.0))
        log1m = xp.where(x > -math.log(2), xp.log(-xp.expm1(x)), xp.log1p(-xp.exp(x)))
        raw = xp.where(below, log_s + log1m, xp.full_like(x, -xp.inf)) - math.log1p(-tau)
    bound = log_q + floor  # log(Q e^{-1/t})
    clamped = ~(raw > bound) | ~has
    log_ng = xp.where(clamped, bound, raw)
    gap = log_ng - z_p
    rows = xp.where(has, softplus(xp, gap), xp.zeros_like(gap))
    sigma = xp.where(has, sigmoid(xp, gap), xp.zeros_like(gap))
    free = xp.where(clamped, xp.zeros_like(gap), sigma)  # sigma where not clamped
    # d l / d log S = sigma S / ((1 - tau) Ng) where not clamped; at the positive, -sigma,
    # less sigma tau Q e^{z_p} / ((1 - tau) Ng) where not clamped
    c1 = free * xp.exp(xp.where(clamped, xp.zeros_like(gap), log_s - log_ng) - math.log1p(-tau))
    pull = -sigma
    if tau:
        part = math.log(tau) + log_q + z_p - math.log1p(-tau) - log_ng
        pull = pull - free * xp.exp(xp.where(clamped, xp.zeros_like(gap), part))
    b = lse(xp, extra[0], extra[1]) if beta else log_q
    scale_term = xp.where(clamped & has, -sigma, xp.zeros_like(gap))
    return rows, n_pos, (lse(xp, top, total), b, c1, pull, scale_term)


def _debiased_response(
    xp: Namespace, p: Any, residual: Any, z: Array, masks: Any, mine: bool, kept: Any
) -> Array:
    """:func:`response` of debiased rows; ``masks``: the tile's hidden and positive cells."""
    a, b, c1, pull, _ = residual
    beta, positive = p.debias[1], masks[1]
    negatives = either(xp, *masks)
    if not beta:
        out = exp_kept(
            xp, z, negatives, safe_shift(xp, a)[:, None], mine, kept.get("main"), c1[:, None]
        )
        return subtract_where(xp, out, positive, -pull)
    # c1 ((1 + beta) e^{(1 + beta) z - A} - beta e^{beta z - B})
    if "main" in kept and "more" in kept:  # from the first pass's two exps: two passes
        (tilted, at), (others, at_b) = kept["main"], kept["more"]
        k_a = c1 * (1.0 + beta) * xp.exp(at[:, 0] - safe_shift(xp, a))
        k_b = c1 * beta * xp.exp(at_b[:, 0] - b)
        out = subtract_product(xp, multiply_into(xp, tilted, k_a[:, None]), others, k_b[:, None])
        return subtract_where(xp, out, positive, -pull)
    # as e^{beta z - B} times (c1 (1 + beta) e^{z - (A - B)} - c1 beta): two exps, each
    # bounded on the negatives
    cells = hide(xp, z, negatives, mine)
    weights = exp_of(xp, cells * beta, b[:, None], True)
    out = exp_of(xp, cells, (safe_shift(xp, a) - b)[:, None], mine or cells is not z)
    out = subtract_into(
        xp, multiply_into(xp, out, (c1 * (1.0 + beta))[:, None]), (c1 * beta)[:, None]
    )
    return subtract_where(xp, multiply_into(xp, out, weights), positive, -pull)


def scale_term(xp: Namespace, p: Any, residual: tuple[Array, ...]) -> Any:
    """Each row's derivative in the scale beyond its logits' (the debiased clamp's), or None."""
    return residual[-1] if p.debias is not None else None
