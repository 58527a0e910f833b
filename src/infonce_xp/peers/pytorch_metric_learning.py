"""pytorch-metric-learning's NT-Xent and SupCon losses, for any array library.

``from infonce_xp.peers import pytorch_metric_learning as pml`` replaces
``from pytorch_metric_learning import losses as pml``: ``pml.NTXentLoss(temperature=0.07)``,
``pml.SupConLoss(temperature=0.1)`` and ``pml.SelfSupervisedLoss(loss, symmetric=True)`` take
the same arguments and give pytorch-metric-learning's numbers (cosine similarity, its default
distance, and its default reducers), on the arrays they are given. ``ref_emb`` with
``ref_labels`` is :func:`infonce_xp.supervised_info_nce`'s ``references``; miners'
``indices_tuple`` is not taken.
"""

from __future__ import annotations

from typing import Any

from .._loss import InfoNCE, SupervisedInfoNCE
from .._typing import Array
from ._common import no_argument

__all__ = ["NTXentLoss", "SelfSupervisedLoss", "SupConLoss"]

_MINERS = "miners' pairs and triplets are not taken; every pair of the batch is used"


class _Labelled:
    """A pytorch-metric-learning loss on ``embeddings`` and their class ``labels``."""

    positives = ""

    def __init__(self, temperature: float | Array, *, chunk_size: int | None = None) -> None:
        self.temperature = temperature
        self._loss = SupervisedInfoNCE(temperature, positives=self.positives, chunk_size=chunk_size)

    def __call__(
        self,
        embeddings: Array,
        labels: Array | None = None,
        indices_tuple: Any = None,
        ref_emb: Array | None = None,
        ref_labels: Array | None = None,
    ) -> Array:
        no_argument("indices_tuple", indices_tuple, _MINERS)
        if labels is None:
            raise ValueError(
                f"{type(self).__name__} needs labels, the (N,) class ids of the embeddings "
                "(pytorch-metric-learning's pairs come from them); for two views of the same "
                "samples use SelfSupervisedLoss"
            )
        if ref_emb is None and ref_labels is None:
            return self._loss(embeddings, labels)
        if ref_emb is None or ref_labels is None:
            raise ValueError(
                "ref_emb and ref_labels go together here (the positives of a row are the "
                "references of its class); pass both, or neither to compare the embeddings "
                "with each other"
            )
        return self._loss(embeddings, labels, references=ref_emb, reference_labels=ref_labels)

    forward = __call__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(temperature={self.temperature!r})"


class NTXentLoss(_Labelled):
    """``pytorch_metric_learning.losses.NTXentLoss``: one term per positive pair.

    Each pair ``(i, p)`` of rows with the same label is a term
    ``-log(exp(z_ip) / (exp(z_ip) + sum_n exp(z_in)))`` over the anchor's negatives ``n``
    (the rows of other labels); the loss is the mean over all pairs (0 without any).
    :func:`infonce_xp.supervised_info_nce` with ``positives="pairs"``.

    Parameters
    ----------
    temperature : float or 0-D array, default 0.07
        Cosine similarities are divided by it.
    chunk_size : int, optional
        Keyword-only: compute in tiles of this many rows (see :func:`infonce_xp.info_nce`).

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import pytorch_metric_learning as pml
    >>> rng = np.random.default_rng(0)
    >>> loss = pml.NTXentLoss(temperature=0.07)(rng.normal(size=(8, 4)), np.arange(8) % 3)
    >>> bool(loss > 0)
    True
    """

    positives = "pairs"

    def __init__(self, temperature: float | Array = 0.07, *, chunk_size: int | None = None) -> None:
        super().__init__(temperature, chunk_size=chunk_size)


class SupConLoss(_Labelled):
    """``pytorch_metric_learning.losses.SupConLoss``: supervised contrastive loss (SupCon's
    L_out).

    Each row's loss is the log-sum-exp over all other rows minus the mean logit of its
    positives (the other rows of its label); the mean is over the rows that have a positive.
    :func:`infonce_xp.supervised_info_nce` with ``positives="supcon"``.

    Parameters
    ----------
    temperature : float or 0-D array, default 0.1
        Cosine similarities are divided by it.
    chunk_size : int, optional
        Keyword-only: compute in tiles of this many rows (see :func:`infonce_xp.info_nce`).

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import pytorch_metric_learning as pml
    >>> rng = np.random.default_rng(0)
    >>> loss = pml.SupConLoss(temperature=0.1)(rng.normal(size=(8, 4)), np.arange(8) % 3)
    >>> bool(loss > 0)
    True
    """

    positives = "supcon"

    def __init__(self, temperature: float | Array = 0.1, *, chunk_size: int | None = None) -> None:
        super().__init__(temperature, chunk_size=chunk_size)


class SelfSupervisedLoss:
    """``pytorch_metric_learning.losses.SelfSupervisedLoss``: two views, row ``i`` of each a
    positive pair.

    ``SelfSupervisedLoss(NTXentLoss(t))(z0, z1)`` (or with ``SupConLoss``: one positive per
    row gives the same numbers) is SimCLR's NT-Xent: ``info_nce(z0, z1, temperature=t,
    symmetric=True, same_view_negatives=True)``; with ``symmetric=False`` the first view's rows
    are scored against the second view only, the plain in-batch loss.

    Parameters
    ----------
    loss : NTXentLoss or SupConLoss
        The loss to wrap (its temperature is used).
    symmetric : bool, default True
        Score both views as anchors.

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import pytorch_metric_learning as pml
    >>> rng = np.random.default_rng(0)
    >>> z0, z1 = rng.normal(size=(2, 8, 4))
    >>> bool(pml.SelfSupervisedLoss(pml.NTXentLoss(temperature=0.5))(z0, z1) > 0)
    True
    """

    def __init__(self, loss: NTXentLoss | SupConLoss, symmetric: bool = True) -> None:
        if not isinstance(loss, (NTXentLoss, SupConLoss)):
            raise TypeError(
                "loss must be an NTXentLoss or SupConLoss of infonce_xp.peers."
                f"pytorch_metric_learning; got {type(loss).__name__}"
            )
        self.loss, self.symmetric = loss, symmetric
        options = loss._loss.options
        self._loss = InfoNCE(
            options.temperature,
            symmetric=symmetric,
            same_view_negatives=symmetric,
            chunk_size=options.chunk_size,
        )

    def __call__(self, embeddings: Array, ref_emb: Array) -> Array:
        return self._loss(embeddings, ref_emb)

    forward = __call__

    def __repr__(self) -> str:
        return f"SelfSupervisedLoss({self.loss!r}, symmetric={self.symmetric!r})"
