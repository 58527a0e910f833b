"""open_clip's CLIP and SigLIP losses, for any array library.

``from infonce_xp.peers import open_clip`` and ``open_clip.ClipLoss()`` (or
``open_clip.SigLipLoss()``) replace ``open_clip.loss.ClipLoss`` (``SigLipLoss``): the same
arguments (``logit_scale`` the exp'd scale, as the model returns it), open_clip's numbers, on
the arrays they are given.
"""

from __future__ import annotations

from typing import Any

from .._checks import describe
from .._loss import info_nce
from .._sigmoid_loss import sigmoid_loss
from .._typing import Array
from ._common import check_flag

__all__ = ["ClipLoss", "SigLipLoss"]

_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


class ClipLoss:
    """``open_clip.loss.ClipLoss``: the symmetric cross-entropy of CLIP.

    ``logit_scale * image_features @ text_features.T`` scored both ways (images against texts
    and texts against images), each row's positive on the diagonal, the mean of the two:
    ``info_nce(image_features, text_features, temperature=1 / logit_scale, symmetric=True,
    normalize=False)``. The features are used as given (open_clip's model normalises them);
    ``logit_scale`` may be a 0-D array, which then receives its gradient. A ``logit_bias``
    adds the same number to every logit of a row and so changes neither the loss nor any
    gradient. open_clip's ``cache_labels`` and ``use_horovod`` are left out.

    Parameters
    ----------
    local_loss, gather_with_grad : bool, default False
        open_clip's distributed modes (see ``world_size``); with one process they change
        nothing, as in open_clip.
    rank : int, default 0
        This process's rank.
    world_size : int, default 1
        The number of processes; above 1 the features are gathered over
        ``torch.distributed`` (:class:`infonce_xp.torch.AllGather`) as open_clip gathers them:
        ``local_loss=True`` scores this process's rows against every process's,
        ``local_loss=False`` computes the whole batch's loss on every process;
        ``gather_with_grad`` chooses the gradient's convention (see ``AllGather``'s
        ``backward``).
    chunk_size : int, optional
        Keyword-only: compute in tiles of this many rows (see :func:`infonce_xp.info_nce`).

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import open_clip
    >>> rng = np.random.default_rng(0)
    >>> image, text = rng.normal(size=(2, 8, 4))
    >>> image /= np.linalg.norm(image, axis=1, keepdims=True)
    >>> text /= np.linalg.norm(text, axis=1, keepdims=True)
    >>> bool(open_clip.ClipLoss()(image, text, 100.0) > 0)
    True
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int = 0,
        world_size: int = 1,
        *,
        chunk_size: int | None = None,
    ) -> None:
        check_flag("local_loss", local_loss)
        check_flag("gather_with_grad", gather_with_grad)
        _check_ranks(rank, world_size)
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size, self.chunk_size = rank, world_size, chunk_size

    def __call__(
        self,
        image_features: Array,
        text_features: Array,
        logit_scale: Any,
        logit_bias: Any = None,
        output_dict: bool = False,
    ) -> Any:
        _check_scale(logit_scale)
        options: dict[str, Any] = {"symmetric": True, "normalize": False}
        features = (image_features, text_features)
        if self.world_size > 1:
            gather = self._gather(image_features)
            if self.local_loss:  # this process's rows against every process's
                options["gather"] = gather
            else:  # every process computes the whole batch's loss
                features = (gather(image_features), gather(text_features))
        loss = info_nce(
            *features, temperature=1 / logit_scale, chunk_size=self.chunk_size, **options
        )
        return {"contrastive_loss": loss} if output_dict else loss

    def _gather(self, x: Any) -> Any:
        """open_clip's gather of features with its gradient conventions: with
        ``gather_with_grad``, summed over the processes; without, the local loss's own (the
        local rows put back, when every process computes the whole loss) or none."""
        from ..torch import AllGather

        gather = AllGather(
            backward="sum" if self.gather_with_grad else "none" if self.local_loss else "local"
        )
        _check_world(gather, self.rank, self.world_size)
        return gather

    forward = __call__

    def __repr__(self) -> str:
        return (
            f"ClipLoss(local_loss={self.local_loss!r}, gather_with_grad="
            f"{self.gather_with_grad!r}, rank={self.rank!r}, world_size={self.world_size!r})"
        )


def _check_ranks(rank: Any, world_size: Any) -> None:
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int; got {describe(value)}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size); got {rank!r} and {world_size!r}")


def _check_world(gather: Any, rank: int, world_size: int) -> None:
    """``rank`` and ``world_size`` must be this process's in torch.distributed."""
    if gather.rank() != rank or _world() != world_size:
        raise ValueError(
            f"rank and world_size must be this process's in torch.distributed; got "
            f"rank={rank}, world_size={world_size}, and the process group has "
            f"rank {gather.rank()} of {_world()}"
        )


def _world() -> int:
    import torch.distributed as dist

    return int(dist.get_world_size())


def _check_scale(logit_scale: Any) -> None:
    if isinstance(logit_scale, bool) or not (
        (isinstance(logit_scale, (int, float)) and logit_scale > 0)
        or getattr(logit_scale, "ndim", None) == 0
    ):
        raise ValueError(
            f"logit_scale must be a number > 0 or a 0-D array; got {describe(logit_scale)}"
        )


class SigLipLoss:
    """``open_clip.loss.SigLipLoss``: the sigmoid loss of SigLIP.

    ``-logsigmoid(y * (logit_scale * image_features @ text_features.T + logit_bias))`` summed
    over every pair and divided by the number of images, ``y`` +1 on the diagonal and -1
    elsewhere: ``sigmoid_loss(image_features, text_features, temperature=1 / logit_scale,
    bias=logit_bias, normalize=False)`` (see :func:`infonce_xp.sigmoid_loss`). ``logit_scale``
    and ``logit_bias`` may be 0-D arrays, which then receive their gradients.

    Parameters
    ----------
    cache_labels : bool, default False
        Kept for the signature; open_clip's cache is unused, and so is ours.
    rank : int, default 0
        This process's rank.
    world_size : int, default 1
        The number of processes; above 1, each process's images meet every process's texts
        over ``torch.distributed`` (the texts gathered by :class:`infonce_xp.torch.AllGather`,
        their gradients summed back to their process), as in open_clip.
    dist_impl : {"bidir", "shift", "reduce", "gather"}, optional
        How open_clip passes the texts around (None: "bidir"). Each gives the same loss and
        gradients. Here "bidir" and "shift" pass them round the ring of processes
        (``exchange="ring"``: no process holds every text at once), "reduce" and "gather"
        gather them all at once (``exchange="gather"``).
    chunk_size : int, optional
        Keyword-only: compute in tiles of this many rows (see :func:`infonce_xp.sigmoid_loss`).

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import open_clip
    >>> rng = np.random.default_rng(0)
    >>> image, text = rng.normal(size=(2, 8, 4))
    >>> image /= np.linalg.norm(image, axis=1, keepdims=True)
    >>> text /= np.linalg.norm(text, axis=1, keepdims=True)
    >>> bool(open_clip.SigLipLoss()(image, text, 10.0, -10.0) > 0)
    True
    """

    def __init__(
        self,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_impl: str | None = None,
        *,
        chunk_size: int | None = None,
    ) -> None:
        check_flag("cache_labels", cache_labels)
        _check_ranks(rank, world_size)
        if dist_impl is not None and dist_impl not in _DIST_IMPLS:
            raise ValueError(f"dist_impl must be None or one of {_DIST_IMPLS}; got {dist_impl!r}")
        self.cache_labels, self.rank, self.world_size = cache_labels, rank, world_size
        self.dist_impl = dist_impl or "bidir"
        self.chunk_size = chunk_size

    def __call__(
        self,
        image_features: Array,
        text_features: Array,
        logit_scale: Any,
        logit_bias: Any,
        output_dict: bool = False,
    ) -> Any:
        _check_scale(logit_scale)
        gather = None
        if self.world_size > 1:
            from ..torch import AllGather

            gather = AllGather(backward="sum")
            _check_world(gather, self.rank, self.world_size)
        exchange = "ring" if self.dist_impl in ("bidir", "shift") else "gather"
        loss = sigmoid_loss(
            image_features,
            text_features,
            1 / logit_scale,
            logit_bias,
            normalize=False,
            chunk_size=self.chunk_size,
            gather=gather,
            exchange=exchange,
        )
        return {"contrastive_loss": loss} if output_dict else loss

    forward = __call__

    def __repr__(self) -> str:
        return (
            f"SigLipLoss(cache_labels={self.cache_labels!r}, rank={self.rank!r}, "
            f"world_size={self.world_size!r}, dist_impl={self.dist_impl!r})"
        )
