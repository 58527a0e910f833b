"""sentence-transformers' contrastive losses, for any array library.

``from infonce_xp.peers import sentence_transformers as st`` and
``st.MultipleNegativesRankingLoss(scale=20.0, ...)``, ``st.CachedMultipleNegativesRankingLoss``
and ``st.GISTEmbedLoss`` replace the losses of ``sentence_transformers.losses``: the same
arguments after ``model`` (the models and ``similarity_fct`` are left out: the losses take
embeddings, and the similarity is the cosine), sentence-transformers' numbers, on the arrays
they are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._checks import describe
from .._loss import InfoNCE
from .._namespaces import array_namespace
from .._typing import Array
from ._common import check_flag, torch_gather

__all__ = ["CachedMultipleNegativesRankingLoss", "GISTEmbedLoss", "MultipleNegativesRankingLoss"]

DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITIONS = ("joint", "per_direction")
HARDNESS = (None, "in_batch_negatives", "hard_negatives", "all_negatives")


class MultipleNegativesRankingLoss:
    """``sentence_transformers.losses.MultipleNegativesRankingLoss`` on embeddings.

    Each anchor (query) is scored against every positive (document) of the batch and every
    hard negative of every column, its own positive the target: ``info_nce(anchor, positive,
    stack(negatives, axis=1), temperature=1 / scale, negative_mode="paired",
    share_negatives=True, in_batch_negatives=True)`` (row i's hard negatives are its own, for
    ``hardness_mode``). The call takes the columns' embeddings, ``loss(anchor, positive,
    *negatives)``, or as sentence-transformers'
    ``compute_loss_from_embeddings([anchor, positive, *negatives], labels)`` does.

    Parameters
    ----------
    scale : float, default 20.0
        The cosine similarities are multiplied by it (the inverse temperature).
    gather_across_devices : bool, default False
        With torch tensors under ``torch.distributed``, score each process's anchors against
        every process's documents (:func:`infonce_xp.torch.all_gather`), as
        sentence-transformers does.
    directions : tuple of str, default ("query_to_doc",)
        Which similarities form a row's candidates: "query_to_doc" (required), and any of
        "query_to_query" (the other anchors), "doc_to_query" (the row's document against
        every anchor) and "doc_to_doc" (against every other document, the row's own hard
        negatives excepted).
    partition_mode : {"joint", "per_direction"}, default "joint"
        One log-sum-exp over all directions' candidates (``same_view_negatives`` and
        ``joint_directions`` of the core), or one per direction, averaged (the symmetric
        loss; sentence-transformers allows it only for "query_to_doc" and "doc_to_query").
    hardness_mode : {None, "in_batch_negatives", "hard_negatives", "all_negatives"}
        Which negatives hardness weighting applies to (the core's ``hardness_mode``): the
        query-to-document logits of those negatives gain
        ``hardness_strength * stop_gradient(cosine)``.
    hardness_strength : float, default 0.0
        The hardness weight; must be >= 0.
    chunk_size : int, optional
        Keyword-only: compute in tiles of this many rows (see :func:`infonce_xp.info_nce`).

    Raises
    ------
    ValueError
        For the values sentence-transformers rejects (a scale that is not > 0, unknown or
        missing directions, ``"per_direction"`` with same-type directions, a negative
        strength).

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import sentence_transformers as st
    >>> rng = np.random.default_rng(0)
    >>> anchor, positive, negative = rng.normal(size=(3, 8, 4))
    >>> bool(st.MultipleNegativesRankingLoss(scale=20.0)(anchor, positive, negative) > 0)
    True
    """

    def __init__(
        self,
        scale: float = 20.0,
        gather_across_devices: bool = False,
        directions: tuple[str, ...] = ("query_to_doc",),
        partition_mode: str = "joint",
        hardness_mode: str | None = None,
        hardness_strength: float = 0.0,
        *,
        chunk_size: int | None = None,
    ) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"scale must be a number > 0; got {describe(scale)}")
        check_flag("gather_across_devices", gather_across_devices)
        directions = tuple(directions)
        if not directions:
            raise ValueError("directions must name at least one direction; got ()")
        unknown = [d for d in directions if d not in DIRECTIONS]
        if unknown:
            raise ValueError(f"directions must be among {DIRECTIONS}; got {unknown}")
        if "query_to_doc" not in directions:
            raise ValueError(
                "directions must include 'query_to_doc' (it holds the positive pair); "
                f"got {directions}"
            )
        if partition_mode not in PARTITIONS:
            raise ValueError(f"partition_mode must be one of {PARTITIONS}; got {partition_mode!r}")
        if partition_mode == "per_direction" and {"query_to_query", "doc_to_doc"} & set(directions):
            raise ValueError(
                "partition_mode='per_direction' needs every direction's candidates to include "
                "the positive pair, which 'query_to_query' and 'doc_to_doc' do not; use "
                f"partition_mode='joint'; got directions={directions}"
            )
        if hardness_mode not in HARDNESS:
            raise ValueError(f"hardness_mode must be one of {HARDNESS}; got {hardness_mode!r}")
        if not isinstance(hardness_strength, (int, float)) or not hardness_strength >= 0:
            raise ValueError(
                f"hardness_strength must be a number >= 0; got {describe(hardness_strength)}"
            )
        options = _directions(set(directions), partition_mode)
        self.scale, self.gather_across_devices = scale, gather_across_devices
        self.directions, self.partition_mode = directions, partition_mode
        self.hardness_mode, self.hardness_strength = hardness_mode, hardness_strength
        self._options: dict[str, Any] = {
            "in_batch_negatives": True,
            "negative_mode": "paired",
            "share_negatives": True,
            "hardness_mode": hardness_mode,
            "hardness_strength": hardness_strength,
            "chunk_size": chunk_size,
        }
        self._options |= options
        self._loss = InfoNCE(1.0 / scale, **self._options)

    @property
    def temperature(self) -> float:
        """``1 / scale``, as sentence-transformers' property."""
        return 1.0 / self.scale

    def __call__(self, anchor: Array, positive: Array, *negatives: Array) -> Array:
        hard = _columns(anchor, negatives)
        gather = torch_gather(anchor, self.gather_across_devices, "gather_across_devices")
        loss = self._loss
        if gather is not None:
            loss = InfoNCE(self.temperature, gather=gather, **self._options)
        return loss(anchor, positive, hard)

    forward = __call__

    def compute_loss_from_embeddings(self, embeddings: Sequence[Array], labels: Any) -> Array:
        """The loss of ``[anchor, positive, *negatives]`` (``labels`` is ignored, as there)."""
        if len(embeddings) < 2:
            raise ValueError(
                "embeddings must hold at least an anchor and a positive column; got "
                f"{len(embeddings)}"
            )
        return self(*embeddings)

    def __repr__(self) -> str:
        return (
            f"MultipleNegativesRankingLoss(scale={self.scale!r}, gather_across_devices="
            f"{self.gather_across_devices!r}, directions={self.directions!r}, partition_mode="
            f"{self.partition_mode!r}, hardness_mode={self.hardness_mode!r}, "
            f"hardness_strength={self.hardness_strength!r})"
        )


class CachedMultipleNegativesRankingLoss:
    """``sentence_transformers.losses.CachedMultipleNegativesRankingLoss``: the same loss as
    :class:`MultipleNegativesRankingLoss`, through gradient caching (GradCache, Gao et al.
    2021) with :func:`infonce_xp.torch.grad_cache`.

    The model is left out: the call takes the encoder and the batch, ``loss(encode,
    inputs)``, where ``encode(micro_batch)`` returns the columns' embeddings ``(anchor,
    positive, *negatives)`` of a micro-batch of ``inputs`` (a tensor or a tuple/dict of them,
    rows along axis 0). The batch is embedded ``mini_batch_size`` rows at a time, the loss and
    every embedding's gradient are computed at once, and each micro-batch is embedded again
    with its graph and back-propagated: the parameters' ``.grad`` accumulate as for the
    uncached loss, and the loss is returned detached. ``mini_batch_num_tokens`` and
    ``show_progress_bar`` are left out with the model.

    Parameters
    ----------
    scale, gather_across_devices, directions, partition_mode, hardness_mode, hardness_strength
        As in :class:`MultipleNegativesRankingLoss`.
    mini_batch_size : int, default 32
        The rows embedded at a time.
    chunk_size : int, optional
        Keyword-only: compute the loss in tiles of this many rows.

    Examples
    --------
    >>> import torch
    >>> from infonce_xp.peers import sentence_transformers as st
    >>> model = torch.nn.Linear(8, 4)
    >>> inputs = torch.randn(2, 16, 8)  # (anchor, positive) inputs of 16 pairs
    >>> loss_fn = st.CachedMultipleNegativesRankingLoss(mini_batch_size=4)
    >>> loss = loss_fn(lambda batch: (model(batch[0]), model(batch[1])), tuple(inputs))
    >>> model.weight.grad.shape
    torch.Size([4, 8])
    """

    def __init__(
        self,
        scale: float = 20.0,
        mini_batch_size: int = 32,
        gather_across_devices: bool = False,
        directions: tuple[str, ...] = ("query_to_doc",),
        partition_mode: str = "joint",
        hardness_mode: str | None = None,
        hardness_strength: float = 0.0,
        *,
        chunk_size: int | None = None,
    ) -> None:
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int):
            raise TypeError(f"mini_batch_size must be an int; got {describe(mini_batch_size)}")
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be at least 1; got {mini_batch_size!r}")
        self.mini_batch_size = mini_batch_size
        self.loss = MultipleNegativesRankingLoss(
            scale,
            gather_across_devices,
            directions,
            partition_mode,
            hardness_mode,
            hardness_strength,
            chunk_size=chunk_size,
        )

    def __call__(self, encode: Any, inputs: Any) -> Any:
        from ..torch import grad_cache

        return grad_cache(encode, inputs, self.loss, self.mini_batch_size)

    forward = __call__

    def __repr__(self) -> str:
        inner = repr(self.loss).removeprefix("MultipleNegativesRankingLoss(")
        return f"CachedMultipleNegativesRankingLoss(mini_batch_size={self.mini_batch_size}, {inner}"


class GISTEmbedLoss:
    """``sentence_transformers.losses.GISTEmbedLoss`` on embeddings and a guide's embeddings.

    Each anchor is scored against every positive (its own the target), and optionally the
    other anchors, every positive's similarity to the other positives (scored by the row's
    positive) and one column of negatives; a candidate whose guide similarity to the row
    exceeds the guide similarity of the row's own pair, less the margin, is left out (a false
    negative). ``info_nce(anchor, positive, negative, temperature, in_batch_negatives=True,
    same_view_negatives=contrast_anchors, joint_directions=("key_to_key",) if
    contrast_positives, guide_margin=margin, guide_strategy=margin_strategy, guide=...)``.
    The model and the guide model are left out: the call takes both models' embeddings,
    ``loss((anchor, positive[, negative]), (guide_anchor, guide_positive[, guide_negative]))``.

    Parameters
    ----------
    temperature : float, default 0.01
        The cosine similarities are divided by it.
    margin_strategy : {"absolute", "relative"}, default "absolute"
        A candidate is hidden when its guide similarity is above ``g - margin``
        ("absolute") or ``g - |g| * margin`` ("relative"), ``g`` that of the row's own pair.
    margin : float, default 0.0
        The margin.
    contrast_anchors, contrast_positives : bool, default True
        Whether the other anchors, and the positives' similarities among themselves, are
        candidates too.
    gather_across_devices : bool, default False
        As in :class:`MultipleNegativesRankingLoss` (not yet with ``contrast_anchors``:
        sentence-transformers keeps that block local).
    chunk_size : int, optional
        Keyword-only: compute in tiles of this many rows (see :func:`infonce_xp.info_nce`).

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import sentence_transformers as st
    >>> rng = np.random.default_rng(0)
    >>> anchor, positive, guide_anchor, guide_positive = rng.normal(size=(4, 8, 4))
    >>> loss = st.GISTEmbedLoss(margin=0.1)((anchor, positive), (guide_anchor, guide_positive))
    >>> bool(loss > 0)
    True
    """

    def __init__(
        self,
        temperature: float = 0.01,
        margin_strategy: str = "absolute",
        margin: float = 0.0,
        contrast_anchors: bool = True,
        contrast_positives: bool = True,
        gather_across_devices: bool = False,
        *,
        chunk_size: int | None = None,
    ) -> None:
        for name, flag in (
            ("contrast_anchors", contrast_anchors),
            ("contrast_positives", contrast_positives),
            ("gather_across_devices", gather_across_devices),
        ):
            check_flag(name, flag)
        if margin_strategy not in ("absolute", "relative"):
            raise ValueError(
                "margin_strategy must be 'absolute' or 'relative'; got " + describe(margin_strategy)
            )
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise TypeError(f"margin must be a number; got {describe(margin)}")
        if gather_across_devices and contrast_anchors:
            raise ValueError(
                "gather_across_devices=True with contrast_anchors=True is not supported yet "
                "(sentence-transformers scores the anchors against this process's anchors only)"
            )
        self.temperature, self.margin_strategy, self.margin = temperature, margin_strategy, margin
        self.contrast_anchors, self.contrast_positives = contrast_anchors, contrast_positives
        self.gather_across_devices = gather_across_devices
        self._options: dict[str, Any] = {
            "in_batch_negatives": True,
            "same_view_negatives": contrast_anchors,
            "joint_directions": ("key_to_key",) if contrast_positives else (),
            "guide_margin": margin,
            "guide_strategy": margin_strategy,
            "chunk_size": chunk_size,
        }
        self._loss = InfoNCE(temperature, **self._options)

    def __call__(self, embeddings: Sequence[Array], guide_embeddings: Sequence[Array]) -> Array:
        embeddings, guide_embeddings = tuple(embeddings), tuple(guide_embeddings)
        if len(embeddings) not in (2, 3):
            raise ValueError(
                "embeddings must be (anchor, positive) or (anchor, positive, negative); got "
                f"{len(embeddings)} columns"
            )
        if len(guide_embeddings) != len(embeddings):
            raise ValueError(
                f"guide_embeddings must have the {len(embeddings)} columns of embeddings; got "
                f"{len(guide_embeddings)}"
            )
        gather = torch_gather(embeddings[0], self.gather_across_devices, "gather_across_devices")
        loss = self._loss
        if gather is not None:
            loss = InfoNCE(self.temperature, gather=gather, **self._options)
        return loss(*embeddings, guide=guide_embeddings)

    forward = __call__

    def __repr__(self) -> str:
        return (
            f"GISTEmbedLoss(temperature={self.temperature!r}, margin_strategy="
            f"{self.margin_strategy!r}, margin={self.margin!r}, contrast_anchors="
            f"{self.contrast_anchors!r}, contrast_positives={self.contrast_positives!r}, "
            f"gather_across_devices={self.gather_across_devices!r})"
        )


def _directions(directions: set[str], partition_mode: str) -> dict[str, Any]:
    """The core options of sentence-transformers' directions: per direction, the symmetric
    loss; joint, the query's other queries and the document's cells in the query's row."""
    if partition_mode == "per_direction":
        return {"symmetric": "doc_to_query" in directions}
    joint = tuple(name.replace("doc", "key") for name in directions if name.startswith("doc"))
    return {"same_view_negatives": "query_to_query" in directions, "joint_directions": joint}


def _columns(anchor: Array, negatives: Sequence[Array]) -> Array | None:
    """The hard-negative columns as paired negatives (N, C, D): row i's are anchor i's own, and
    ``share_negatives`` makes them every anchor's candidates."""
    if not negatives:
        return None
    for c, column in enumerate(negatives):
        if getattr(column, "shape", None) != getattr(anchor, "shape", None):
            raise ValueError(
                f"negatives[{c}] must have the anchor's shape {tuple(anchor.shape)}; got "
                f"{describe(column)}"
            )
    return array_namespace(*negatives).stack(list(negatives), axis=1)
