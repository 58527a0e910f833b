"""The InfoNCE math in array-API code: normalisation and one direction's loss rows and gradient.

A *direction* scores anchors ``a`` (N, D) against their positives ``b`` (N, D) and a set of
candidates ``c``: shared (M, D) or paired (N, M, D). Each row's loss is written as

    l_i = (m_i - p_i) + log1p(r_i + expm1(p_i - m_i)),

with ``p_i`` the positive logit, ``m_i`` the row maximum and ``r_i`` the sum of ``exp(logit - m_i)``
over the *other* candidates. Both terms are non-negative, so nothing cancels, and a near-perfect
row (``r_i`` tiny) keeps its full relative precision. In-batch candidates contain the positive
itself (at column ``offset + i``); it is dropped from ``r_i`` rather than subtracted.
"""

from __future__ import annotations

from typing import Any

from ._arrays import device, is_jax_namespace, is_torch_namespace

Array = Any
EPS = 1e-12  # torch.nn.functional.normalize's eps: a zero row becomes a zero vector, scoring 0


def normalise(xp: Any, x: Array) -> tuple[Array, Array]:
    """Rows of ``x`` scaled to unit length, and the clamped norms used to scale them."""
    norm = xp.clip(xp.linalg.vector_norm(x, axis=-1, keepdims=True), min=EPS)
    return x / norm, norm


def normalise_backward(xp: Any, unit: Array, norm: Array, grad_unit: Array) -> Array:
    """Gradient through ``normalise``; a clamped (near-zero) row passes ``grad / EPS`` as torch does."""
    along = xp.sum(unit * grad_unit, axis=-1, keepdims=True)
    along = xp.where(norm > EPS, along, xp.zeros_like(along))
    return (grad_unit - unit * along) / norm


def drop_positive(xp: Any, exps: Array, offset: Any) -> Array:
    """Zero the entries ``exps[i, offset + i]``: each row's own positive among the keys."""
    n, m = exps.shape
    if isinstance(offset, int) and not is_jax_namespace(xp):
        # Our own temporary: a strided write touches N entries instead of a pass over N x M.
        flat = xp.reshape(exps, (-1,))
        flat[offset :: m + 1] = 0
        return xp.reshape(flat, (n, m))
    return xp.where(positive_mask(xp, exps, offset, 0, 0), xp.zeros_like(exps), exps)


def positive_mask(xp: Any, logits: Array, offset: Any, row0: Any, col0: Any) -> Array:
    n, m = logits.shape
    rows = xp.arange(n, device=device(logits)) + row0 + offset
    cols = xp.arange(m, device=device(logits)) + col0
    return cols[None, :] == rows[:, None]


def shifted_exp(xp: Any, logits: Array, row_max: Array) -> Array:
    """``exp(logits - row_max[:, None])``; may overwrite ``logits``, which must be our own."""
    if is_torch_namespace(xp):
        # In place: the (N, M) matrix is allocated once instead of three times (torch only; the
        # standard has no in-place functions, and JAX fuses this anyway).
        return logits.sub_(row_max[:, None]).exp_()
    return xp.exp(logits - row_max[:, None])


def candidate_logits(xp: Any, scaled_anchor: Array, candidates: Array) -> Array:
    """Scaled similarities of each anchor row with the shared (M, D) or paired (N, M, D) candidates."""
    # Operands share one dtype, so the @ operator is safe (and skips array-api-compat's promotion
    # wrapper, which costs more than the product itself at small sizes).
    if candidates.ndim == 3:
        return (candidates @ scaled_anchor[:, :, None])[:, :, 0]
    return scaled_anchor @ candidates.T


def row_losses(xp: Any, positive: Array, row_max: Array, others: Array) -> tuple[Array, Array]:
    """Loss rows from the positive logit, the row maximum and the sum over the other candidates.

    Returns the loss rows and the partition sums ``s_i = r_i + exp(p_i - m_i)``.
    """
    gap = positive - row_max  # <= 0
    return xp.log1p(others + xp.expm1(gap)) - gap, others + xp.exp(gap)


def forward(
    xp: Any, anchor: Array, positive: Array, candidates: Array, scale: Any, offset: Any
) -> tuple[Array, tuple[Array, ...]]:
    """Loss rows of one direction, all logits at once; ``offset`` is None unless in-batch.

    The residuals keep the (N, M) matrix of ``exp(logit - m_i)`` so the backward needs no
    recomputation: two matrix products.
    """
    scaled = anchor * scale
    positive_logit = xp.sum(scaled * positive, axis=-1)
    logits = candidate_logits(xp, scaled, candidates)
    row_max = positive_logit
    if logits.shape[-1] > 0:
        row_max = xp.maximum(positive_logit, xp.max(logits, axis=-1))
    exps = shifted_exp(xp, logits, row_max)
    if offset is not None:
        exps = drop_positive(xp, exps, offset)
    others = xp.sum(exps, axis=-1)
    rows, partition = row_losses(xp, positive_logit, row_max, others)
    return rows, (exps, others, partition)


def backward(
    xp: Any,
    anchor: Array,
    positive: Array,
    candidates: Array,
    scale: Any,
    residuals: tuple[Array, ...],
    grad_rows: Array,
) -> tuple[Array, Array, Array, Array | None]:
    """Gradients of ``sum(grad_rows * rows)`` for anchor, positive, candidates and the scale.

    With ``w = grad / s`` the logit gradient is ``w_i * exps_ij``; the row scaling is applied to
    the (N, D) factors instead of the (N, M) matrix, so no N x M temporary is made.
    """
    exps, others, partition = residuals
    weight = grad_rows / partition * scale  # scale * dl/dlogit_ij = weight_i * exps_ij
    if candidates.ndim == 3:
        pulled = (exps[:, None, :] @ candidates)[:, 0, :]
        grad_candidates = (exps * weight[:, None])[:, :, None] * anchor[:, None, :]
    else:
        pulled = exps @ candidates
        grad_candidates = exps.T @ (anchor * weight[:, None])
    return finish(xp, anchor, positive, scale, weight, others, pulled, grad_candidates)


def finish(
    xp: Any,
    anchor: Array,
    positive: Array,
    scale: Any,
    weight: Array,
    others: Array,
    pulled: Array,
    grad_candidates: Array,
) -> tuple[Array, Array, Array, Array | None]:
    """Assemble the gradients from ``pulled = sum_j exps_ij c_j`` (N, D).

    ``weight`` is ``scale * grad / s`` per row; ``scale * dl/dp = -weight * r`` for the positive
    logit. The scale's gradient is None when the scale is a Python number.
    """
    grad_positive_logit = -(weight * others)[:, None]
    grad_anchor = pulled * weight[:, None] + positive * grad_positive_logit
    # d/d(scale) of scale * <a, x> is <a, x>: the (N, D) product spares a pass over the logits.
    grad_scale = None if isinstance(scale, float) else xp.sum(anchor * grad_anchor) / scale
    return grad_anchor, anchor * grad_positive_logit, grad_candidates, grad_scale
