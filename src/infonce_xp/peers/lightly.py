"""lightly's NT-Xent loss, for any array library.

``from infonce_xp.peers import lightly`` and ``lightly.NTXentLoss(temperature=0.5,
gather_distributed=False)`` replace ``from lightly.loss import NTXentLoss``: the same
arguments, lightly's numbers, on the arrays they are given.
"""

from __future__ import annotations

from typing import Any

from .._loss import InfoNCE
from .._typing import Array
from ._common import check_flag, torch_gather

__all__ = ["NTXentLoss"]


class NTXentLoss:
    """``lightly.loss.NTXentLoss``: SimCLR's NT-Xent over two views.

    Row ``i`` of ``out0`` and of ``out1`` are a positive pair; every other row of both views is
    a negative, and both views are anchors: ``info_nce(out0, out1, temperature,
    symmetric=True, same_view_negatives=True)``. lightly's ``memory_bank_size`` is left out
    (pass the bank as ``negative_keys`` to :func:`infonce_xp.info_nce` instead).

    Parameters
    ----------
    temperature : float or 0-D array, default 0.5
        Cosine similarities are divided by it.
    gather_distributed : bool, default False
        With torch tensors under ``torch.distributed``, score each process's rows against
        every process's (:func:`infonce_xp.torch.all_gather`); the loss is the mean over this
        process's rows, as lightly's is.
    chunk_size : int, optional
        Keyword-only: compute in tiles of this many rows (see :func:`infonce_xp.info_nce`).

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import lightly
    >>> rng = np.random.default_rng(0)
    >>> out0, out1 = rng.normal(size=(2, 8, 4))
    >>> bool(lightly.NTXentLoss(temperature=0.5)(out0, out1) > 0)
    True
    """

    def __init__(
        self,
        temperature: float | Array = 0.5,
        gather_distributed: bool = False,
        *,
        chunk_size: int | None = None,
    ) -> None:
        check_flag("gather_distributed", gather_distributed)
        self.temperature, self.gather_distributed = temperature, gather_distributed
        options: dict[str, Any] = {
            "symmetric": True,
            "same_view_negatives": True,
            "chunk_size": chunk_size,
        }
        self._loss = InfoNCE(temperature, **options)
        self._options = options

    def __call__(self, out0: Array, out1: Array) -> Array:
        gather = torch_gather(out0, self.gather_distributed, "gather_distributed")
        if gather is None:
            return self._loss(out0, out1)
        return InfoNCE(self.temperature, gather=gather, **self._options)(out0, out1)

    forward = __call__

    def __repr__(self) -> str:
        return (
            f"NTXentLoss(temperature={self.temperature!r}, "
            f"gather_distributed={self.gather_distributed!r})"
        )
