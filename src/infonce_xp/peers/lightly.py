"""lightly's NT-Xent and decoupled contrastive losses, for any array library.

``from infonce_xp.peers import lightly`` and ``lightly.NTXentLoss(temperature=0.5,
gather_distributed=False)``, ``lightly.DCLLoss(temperature=0.1, gather_distributed=False)``
and ``lightly.DCLWLoss(temperature=0.1, sigma=0.5, gather_distributed=False)`` replace
``from lightly.loss import ...``: the same arguments, lightly's numbers, on the arrays they
are given.
"""

from __future__ import annotations

from typing import Any

from .._loss import InfoNCE
from .._typing import Array
from ._common import check_flag, torch_gather

__all__ = ["DCLLoss", "DCLWLoss", "NTXentLoss"]


class _TwoViews:
    """A lightly loss of two views: one configured :class:`~infonce_xp.InfoNCE`, gathered
    over ``torch.distributed`` when asked."""

    def __init__(
        self, temperature: float | Array, gather_distributed: bool, **options: Any
    ) -> None:
        check_flag("gather_distributed", gather_distributed)
        self.temperature, self.gather_distributed = temperature, gather_distributed
        options |= {"symmetric": True, "same_view_negatives": True}
        self._loss = InfoNCE(temperature, **options)
        self._options = options

    def __call__(self, out0: Array, out1: Array) -> Array:
        gather = torch_gather(out0, self.gather_distributed, "gather_distributed")
        if gather is None:
            return self._loss(out0, out1)
        return InfoNCE(self.temperature, gather=gather, **self._options)(out0, out1)

    forward = __call__

    def __repr__(self) -> str:
        shown = [f"temperature={self.temperature!r}"]
        if "decoupled_sigma" in self._options:
            shown.append(f"sigma={self._options['decoupled_sigma']!r}")
        shown.append(f"gather_distributed={self.gather_distributed!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


class NTXentLoss(_TwoViews):
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
        super().__init__(temperature, gather_distributed, chunk_size=chunk_size)


class DCLLoss(_TwoViews):
    """``lightly.loss.DCLLoss``: decoupled contrastive learning (Yeh et al. 2022).

    Both views are anchors; a row's positive (the other view of its sample) leaves its
    denominator, and lightly takes one log-sum-exp over the other samples of the other view
    and one over those of the same view, summed: ``info_nce(out0, out1, temperature,
    symmetric=True, same_view_negatives=True, decoupled="blocks")``. lightly's ``weight_fn``
    is left out; :class:`DCLWLoss` is its one weighting.

    Parameters
    ----------
    temperature : float or 0-D array, default 0.1
        Cosine similarities are divided by it.
    gather_distributed : bool, default False
        As in :class:`NTXentLoss`.
    chunk_size : int, optional
        Keyword-only: compute in tiles of this many rows (see :func:`infonce_xp.info_nce`).

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import lightly
    >>> rng = np.random.default_rng(0)
    >>> out0, out1 = rng.normal(size=(2, 8, 4))
    >>> loss = lightly.DCLLoss(temperature=0.1)(out0, out1)
    >>> loss.shape
    ()
    """

    def __init__(
        self,
        temperature: float | Array = 0.1,
        gather_distributed: bool = False,
        *,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(temperature, gather_distributed, chunk_size=chunk_size, decoupled="blocks")


class DCLWLoss(_TwoViews):
    """``lightly.loss.DCLWLoss``: :class:`DCLLoss` with DCLW's weights of the positive terms.

    Row ``i``'s positive term is weighted by ``2 - N softmax_i(s_ii / sigma)`` over the
    process's N rows (held constant in the gradient): ``decoupled_sigma=sigma``.

    Parameters
    ----------
    temperature : float or 0-D array, default 0.1
        Cosine similarities are divided by it.
    sigma : float, default 0.5
        The weights' temperature.
    gather_distributed : bool, default False
        As in :class:`NTXentLoss`.
    chunk_size : int, optional
        Keyword-only: compute in tiles of this many rows (see :func:`infonce_xp.info_nce`).

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import lightly
    >>> rng = np.random.default_rng(0)
    >>> out0, out1 = rng.normal(size=(2, 8, 4))
    >>> loss = lightly.DCLWLoss(temperature=0.1, sigma=0.5)(out0, out1)
    >>> loss.shape
    ()
    """

    def __init__(
        self,
        temperature: float | Array = 0.1,
        sigma: float = 0.5,
        gather_distributed: bool = False,
        *,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            temperature,
            gather_distributed,
            chunk_size=chunk_size,
            decoupled="blocks",
            decoupled_sigma=sigma,
        )
