"""open_clip's CLIP loss, for any array library.

``from infonce_xp.peers import open_clip`` and ``open_clip.ClipLoss()`` replace
``open_clip.loss.ClipLoss``: the same arguments (``logit_scale`` the exp'd scale, as the
model returns it), open_clip's numbers, on the arrays they are given.
"""

from __future__ import annotations

from typing import Any

from .._checks import describe
from .._loss import info_nce
from .._typing import Array
from ._common import check_flag

__all__ = ["ClipLoss"]


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
        open_clip's distributed modes; with one process (``world_size=1``) they change
        nothing, as in open_clip.
    rank : int, default 0
        This process's rank.
    world_size : int, default 1
        Only 1 is supported yet: several processes raise a ValueError.
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
        if world_size != 1:
            raise ValueError(
                "world_size > 1 is not supported yet by infonce_xp.peers.open_clip.ClipLoss; "
                "for the scores of each process's rows against every process's (open_clip's "
                "local_loss=True, gather_with_grad=True), use infonce_xp.torch.InfoNCE with "
                f"symmetric=True, normalize=False and gather=all_gather; got {world_size!r}"
            )
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
        if isinstance(logit_scale, bool) or not (
            (isinstance(logit_scale, (int, float)) and logit_scale > 0)
            or getattr(logit_scale, "ndim", None) == 0
        ):
            raise ValueError(
                f"logit_scale must be a number > 0 or a 0-D array; got {describe(logit_scale)}"
            )
        loss = info_nce(
            image_features,
            text_features,
            temperature=1 / logit_scale,
            symmetric=True,
            normalize=False,
            chunk_size=self.chunk_size,
        )
        return {"contrastive_loss": loss} if output_dict else loss

    forward = __call__

    def __repr__(self) -> str:
        return (
            f"ClipLoss(local_loss={self.local_loss!r}, gather_with_grad="
            f"{self.gather_with_grad!r}, rank={self.rank!r}, world_size={self.world_size!r})"
        )
