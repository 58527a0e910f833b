"""How a plan's rows become the loss, and the loss's gradient the rows': the reduction, the
rows' weights in a mean, the sample weights, and the average over directions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ._arrays import as_array, device
from ._directions import SAMPLE_WEIGHT
from ._typing import Array, Namespace


class Reduction(NamedTuple):
    """The reduction of one plan (hashable, no array)."""

    reduction: str  # "mean", "sum" or "none"
    out_dtype: Any  # the loss's dtype
    plain: tuple[bool, ...]  # per route: a one-positive kernel (each row one positive)
    pairs: bool  # positives="pairs": a row weighs its number of positive pairs in a mean

    def counts(self, xp: Namespace, saved: Sequence[Any]) -> Array | None:
        """Each row's weight in a mean, or None for 1 each: its number of positive pairs with
        ``positives="pairs"``, else whether it has a positive (a plain row has one)."""
        if all(self.plain):
            return None
        counts: Any = None
        for plain, kept in zip(self.plain, saved):
            if plain:
                continue
            count = kept.count
            if not self.pairs:
                count = xp.astype(count > 0, count.dtype)
            counts = count if counts is None else counts + count
        if len(saved) > 1:
            counts = (counts + sum(self.plain)) / len(saved)
        return counts  # type: ignore[no-any-return]

    @staticmethod
    def weights(xp: Namespace, arrays: dict[str, Array], like: Array) -> Array | None:
        """The rows' sample weights in the compute dtype, or None."""
        return None if (w := arrays.get(SAMPLE_WEIGHT)) is None else narrow(xp, w, like.dtype)

    def reduce(self, xp: Namespace, rows: Array, counts: Array | None) -> Array:
        """The reduction in the compute dtype, then the output dtype. A mean weighs each row by
        its count (see ``counts``); a mean over no weight is 0."""
        if self.reduction == "mean":
            if counts is None:
                rows = as_array(xp, xp.mean(rows))
            else:
                rows = as_array(xp, xp.sum(rows) / _divisor(xp, counts))
        elif self.reduction == "sum":
            rows = as_array(xp, xp.sum(rows))
        return rows if rows.dtype == self.out_dtype else xp.astype(rows, self.out_dtype)

    def grad_rows(
        self, xp: Namespace, grad: Any, n: int, counts: Array | None, like: Array
    ) -> Array:
        """The reduction's derivative, with the directions' average: the gradient of each
        direction's rows from the loss's (None: ones). 0-D where all rows share it, which the
        one-positive kernels take as it is (one operation fewer per call)."""
        share = len(self.plain) * (n if self.reduction == "mean" and counts is None else 1)
        if grad is None:
            shape = (n,) if self.reduction == "none" else ()
            grad = xp.full(shape, 1.0 / share, dtype=like.dtype, device=device(like))
        else:
            grad = grad if grad.dtype == like.dtype else xp.astype(grad, like.dtype)
            grad = grad / share if share != 1 else grad
        if self.reduction == "mean" and counts is not None:
            grad = grad / _divisor(xp, counts)
        return grad  # type: ignore[no-any-return]


def _divisor(xp: Namespace, counts: Array) -> Array:
    """The total weight of the rows, or 1 where it is 0 (every row's loss is then 0)."""
    total = xp.sum(counts)
    return xp.where(total > 0, total, xp.ones_like(total))


def narrow(xp: Namespace, x: Array, dtype: Any) -> Array:
    """Cast to ``dtype``: entries beyond a narrower dtype's range become inf, as the seed's do,
    so that loss scalers see the overflow."""
    return x if x.dtype == dtype else xp.astype(x, dtype)
