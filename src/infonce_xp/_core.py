"""The InfoNCE math in array-API code: normalisation and one direction's loss rows and gradient.

A *direction* scores anchors ``a`` (N, D) against their positives ``b`` (N, D) and a set of
candidates ``c``: shared (M, D) or paired (N, M, D). Each row's loss is written as

    l_i = (m_i - p_i) + log1p(r_i + expm1(p_i - m_i)),

with ``p_i`` the positive logit, ``m_i`` the row maximum and ``r_i`` the sum of ``exp(logit - m_i)``
over the *other* candidates. Both terms are non-negative, so nothing cancels, and a near-perfect
row (``r_i`` tiny) keeps its full relative precision. In-batch candidates contain the positive
itself (at column ``offset + i``): that entry is hidden, so it is dropped from ``r_i`` rather
than subtracted. In the backward that same entry carries the positive's gradient, so
the two matrix products give the whole gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._arrays import (
    clip_min,
    diagonal,
    divide_into,
    fill_diagonal,
    fill_where,
    multiply_into,
    row_dot,
    row_norms,
    subtract_diagonal,
    subtract_exp,
    subtract_product,
    traits,
)
from ._typing import Array, Namespace


class Saved(NamedTuple):
    """What the backward of one direction needs: ``exps`` (N, M) is ``exp(logit - m_i)`` (with
    ``-r_i`` in the positive's entry in-batch), ``others`` is ``r_i`` and ``partition`` is
    ``s_i`` (see :func:`row_losses`)."""

    exps: Array
    others: Array
    partition: Array


def normalise(xp: Namespace, x: Array) -> tuple[Array, Array, Array]:
    """Rows of ``x`` scaled to unit length, and for the backward their lengths ``|x_i|`` as two
    factors (the norm of the scaled row and the scale): their product is made only there.

    The sum of squares of a float32 row overflows from about 1e19, where cosine similarity does
    not depend on scale: each row is first divided by its largest magnitude, so that the scaled
    row's norm lies in [1, sqrt(D)] (exactly: its largest entry is 1) and can neither overflow
    nor underflow. A zero row is divided by 1 and stays zero; it scores 0 against everything,
    and its gradient is the incoming gradient itself, finite in every dtype (torch's
    ``normalize`` would pass ``grad / 1e-12``).
    """
    # max(abs(x)): torch's vector_norm(ord=inf) is twenty times slower on CPU.
    largest = xp.max(xp.abs(x), axis=-1, keepdims=True)
    largest = fill_where(xp, largest, largest == 0, 1.0)  # NaN stays NaN
    scaled = x / largest
    length = clip_min(xp, row_norms(xp, scaled), 1.0)
    return scaled / length, length, largest


def normalise_backward(
    xp: Namespace, unit: Array, length: Array, largest: Array, grad_unit: Array
) -> Array:
    """Gradient through ``normalise``: ``(g - u <u, g>) / |x|`` (a zero row: ``g``).

    May overwrite ``grad_unit``, which must be our own temporary.
    """
    grad_unit = subtract_product(xp, grad_unit, unit, row_dot(xp, unit, grad_unit)[..., None])
    # |x| (inf for a row within sqrt(D) of the dtype's maximum, whose gradient is below its
    # smallest number anyway)
    return divide_into(xp, grad_unit, length * largest)


def candidate_logits(xp: Namespace, scaled_anchor: Array, candidates: Array) -> Array:
    """Scaled similarities of each anchor row with the shared (M, D) or paired (N, M, D) candidates."""
    # Operands share one dtype, so the @ operator is safe (and skips array-api-compat's promotion
    # wrapper, which costs more than the product itself at small sizes).
    if candidates.ndim == 3:
        return (candidates @ scaled_anchor[:, :, None])[:, :, 0]
    return scaled_anchor @ candidates.T


def row_losses(xp: Namespace, gap: Array, others: Array) -> tuple[Array, Array]:
    """Loss rows from ``gap = p - m <= 0`` and the sum ``r`` over the other candidates.

    Returns the loss rows and the partition sums ``s_i = r_i + exp(gap_i)``, which are >= 1: the
    maximum is the positive (gap 0) or another candidate (r >= 1).
    """
    shifted = others + xp.expm1(gap)  # s - 1, without cancellation
    return xp.log1p(shifted) - gap, shifted + 1


def forward(
    xp: Namespace,
    anchor: Array,
    positive: Array,
    candidates: Array,
    scale: Any,
    offset: Any,
    fused: bool = False,
) -> tuple[Array, Saved]:
    """Loss rows of one direction, all logits at once; ``offset`` is None unless in-batch.

    The residuals keep the (N, M) matrix of ``exp(logit - m_i)`` so the backward needs no
    recomputation: two matrix products. In-batch, the positive's entry holds ``-r_i`` (its
    logit's gradient, up to the row's weight), so those two products carry the positive's
    gradient too; ``fused`` (a compiler that fuses element-wise work, and turns a strided write
    into a pass over every entry) leaves it 0 instead, and the backward is then called with
    ``offset=None``, which adds the positive's gradient from its own (N, D) product.
    """
    scaled = anchor * scale
    logits = candidate_logits(xp, scaled, candidates)
    if offset is not None and not fused and not traits(xp).lazy:
        # In-batch, the positive's own entry among the candidates is read, then hidden: exp()
        # makes it 0. p_i is one of the row's logits, so p_i - m_i is exactly 0 when it leads.
        positive_logit = diagonal(xp, logits, offset)
        row_max = xp.max(logits, axis=-1)
        logits = fill_diagonal(xp, logits, offset, -xp.inf)
    else:
        # The same for a fusing compiler, from the rows themselves: nothing reads the logits
        # after the exp, so the compiler writes the exps (and the backward's weighted matrix)
        # over the logits' buffer, where reading the diagonal keeps a second N x N buffer.
        positive_logit = row_dot(xp, scaled, positive)
        if offset is not None:
            logits = fill_diagonal(xp, logits, offset, -xp.inf)
        row_max = positive_logit
        if logits.shape[-1] > 0:
            row_max = xp.maximum(positive_logit, xp.max(logits, axis=-1))
    if fused:  # the form measured in the benchmarks (the in-place one ran 2-10 % slower once)
        exps = xp.exp(logits - row_max[:, None])
    else:
        exps = subtract_exp(xp, logits, row_max[:, None])
    others = xp.sum(exps, axis=-1)
    gap = positive_logit - row_max
    rows, partition = row_losses(xp, gap, others)
    if offset is not None and not fused:
        exps = subtract_diagonal(xp, exps, offset, others)
    return rows, Saved(exps, others, partition)


def backward(
    xp: Namespace,
    anchor: Array,
    positive: Array,
    candidates: Array,
    scale: Any,
    residuals: Saved,
    grad_rows: Array,
    offset: Any = None,
    candidates_grad: bool = True,
) -> tuple[Array, Array | None, Array | None, Array | None]:
    """Gradients of ``sum(grad_rows * rows)`` for anchor, positive, candidates and the scale.

    With ``w = grad / s`` the logit gradient is ``w_i * exps_ij``; the row scaling is applied to
    the (N, D) factors instead of the (N, M) matrix, so no N x M temporary is made. In-batch
    (``offset`` not None) the forward left ``-r_i`` in the positive's entry of ``exps``, so the
    two products carry the positive's gradient too: it arrives through the candidates', and
    None is returned for it. ``candidates_grad=False`` skips the candidates' gradient (None),
    a product as large as the logits (a MoCo queue, a frozen encoder's keys).
    """
    exps, others, partition = residuals
    weight = grad_rows / partition * scale  # scale * dl/dlogit_ij = weight_i * exps_ij
    if offset is not None:
        if traits(xp).lazy or exps.shape[-1] <= anchor.shape[-1]:
            # A fusing compiler (XLA) scales the matrix in one pass written over the residual's
            # (now dead) buffer, where a scaled (N, D) anchor would be one more live temporary;
            # with no more candidates than features, the (N, M) matrix is the smaller operand
            # anyway, and scaling it once spares an operation.
            weighted = exps * weight[:, None]
            grad_anchor = weighted @ candidates
            grad_candidates = weighted.T @ anchor if candidates_grad else None
        else:
            column = weight[:, None]
            grad_anchor = multiply_into(xp, exps @ candidates, column)
            grad_candidates = exps.T @ (anchor * column) if candidates_grad else None
        return grad_anchor, None, grad_candidates, scale_gradient(xp, anchor, grad_anchor, scale)
    grad_candidates = None
    if candidates.ndim == 3:
        pulled = (exps[:, None, :] @ candidates)[:, 0, :]
        if candidates_grad:
            grad_candidates = (exps * weight[:, None])[:, :, None] * anchor[:, None, :]
    else:
        pulled = exps @ candidates
        if candidates_grad:
            grad_candidates = exps.T @ (anchor * weight[:, None])
    return finish(xp, anchor, positive, scale, weight, others, pulled, grad_candidates)


def finish(
    xp: Namespace,
    anchor: Array,
    positive: Array,
    scale: Any,
    weight: Array,
    others: Array,
    pulled: Array,
    grad_candidates: Array | None,
) -> tuple[Array, Array, Array | None, Array | None]:
    """Assemble the gradients from ``pulled = sum_j exps_ij c_j`` (N, D).

    ``weight`` is ``scale * grad / s`` per row; ``scale * dl/dp = -weight * r`` for the positive
    logit. The scale's gradient is None when the scale is a Python number.
    """
    grad_positive_logit = -(weight * others)[:, None]
    grad_anchor = pulled * weight[:, None] + positive * grad_positive_logit
    grad_scale = scale_gradient(xp, anchor, grad_anchor, scale)
    return grad_anchor, anchor * grad_positive_logit, grad_candidates, grad_scale


def scale_gradient(xp: Namespace, anchor: Array, grad_anchor: Array, scale: Any) -> Array | None:
    """The scale's gradient, None when it is a Python number.

    Every logit is ``scale * <a_i, x>``, so its scale derivative is ``<a_i, x> = logit / scale``;
    summed with the logit gradients this is ``<a, grad_a> / scale``: an (N, D) product instead of
    a pass over the logits.
    """
    return None if isinstance(scale, float) else xp.sum(anchor * grad_anchor) / scale
