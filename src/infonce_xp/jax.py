"""JAX: a differentiable all-gather over a mapped axis, for ``gather=``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax

from ._jax_grad_cache import grad_cache

__all__ = ["AllGather", "all_gather", "grad_cache"]


@dataclass(frozen=True)
class AllGather:
    """Differentiable all-gather over a named mapped axis, for ``info_nce(..., gather=...)``.

    For use inside ``jax.shard_map`` or ``jax.pmap``; its transpose (``psum_scatter``) returns
    to each device the sum of the gradients of its rows over all devices. ``shift`` passes
    arrays round the ring of devices instead (``sigmoid_loss(..., exchange="ring")``).
    """

    axis_name: Any

    def __call__(self, x: Any) -> Any:
        try:
            return jax.lax.all_gather(x, self.axis_name, axis=0, tiled=True)
        except NameError as err:
            raise ValueError(self._unbound()) from err

    def rank(self) -> Any:
        """This device's block index along the axis (a traced integer)."""
        try:
            return jax.lax.axis_index(self.axis_name)
        except NameError as err:
            raise ValueError(self._unbound()) from err

    def size(self) -> int:
        """The number of devices along the axis."""
        try:
            return int(jax.lax.axis_size(self.axis_name))
        except NameError as err:
            raise ValueError(self._unbound()) from err

    def shift(self, x: Any) -> Any:
        """``x`` sent to the next device along the axis, the previous device's received
        (``lax.ppermute``), for ``exchange="ring"``."""
        n = self.size()
        perm = [(i, (i + 1) % n) for i in range(n)]
        return jax.lax.ppermute(x, self.axis_name, perm)  # type: ignore[no-untyped-call]

    def _unbound(self) -> str:
        return (
            f"infonce_xp.jax.all_gather({self.axis_name!r}) must be used inside jax.shard_map or "
            f"jax.pmap with a mapped axis named {self.axis_name!r}"
        )


def all_gather(axis_name: Any) -> AllGather:
    """A differentiable gather over the mapped axis ``axis_name`` (see :class:`AllGather`).

    Examples
    --------
    >>> from infonce_xp.jax import all_gather
    >>> all_gather("batch")
    AllGather(axis_name='batch')
    """
    return AllGather(axis_name)
