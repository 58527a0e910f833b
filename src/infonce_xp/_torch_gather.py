"""A differentiable all-gather over ``torch.distributed`` (``gather=``), which can also pass
tensors round the ring of workers (``exchange="ring"``); public in :mod:`infonce_xp.torch`."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class _AllGatherFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any, backward: str) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size(group)
        size = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=group)
        if any(int(s) != tensor.shape[0] for s in sizes):
            raise ValueError(
                "every worker must have the same local batch size to gather keys; "
                f"got {[int(s) for s in sizes]}"
            )
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        ctx.group, ctx.rows, ctx.mode = group, tensor.shape[0], backward
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, None, None]:  # type: ignore[override]
        if ctx.mode == "none":
            return None, None, None
        start = dist.get_rank(ctx.group) * ctx.rows
        if ctx.mode == "sum":  # every worker's loss used this worker's rows: their gradients add
            grad = grad.contiguous().clone()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[start : start + ctx.rows], None, None


class AllGather:
    """Differentiable all-gather over ``torch.distributed``, for ``info_nce(..., gather=...)``.

    Calling it returns the concatenation (along axis 0) of a tensor over all workers of
    ``group``; its backward returns to each worker the sum, over all workers, of the gradients
    for its own rows, so that DDP's gradient averaging yields the single-process gradient.
    Works with gloo (CPU) and NCCL (GPU); every worker must hold the same number of rows.

    Parameters
    ----------
    group : ProcessGroup, optional
        The process group; default: the default group.
    backward : {"sum", "local", "none"}, default "sum"
        The gradient a worker's rows receive: "sum", over every worker's loss (the above);
        "local", from this worker's own loss only (open_clip's ``gather_with_grad=False``,
        which puts the local tensor back in its place); "none", nothing through the gathered
        copies (the rows' own uses still get theirs).

    Examples
    --------
    >>> from infonce_xp.torch import AllGather, InfoNCE, all_gather
    >>> loss_fn = InfoNCE(gather=all_gather)  # or AllGather(group) for a sub-group

    ``shift`` passes tensors round the ring of workers instead, for
    ``sigmoid_loss(..., gather=all_gather, exchange="ring")``.
    """

    def __init__(self, group: Any = None, backward: str = "sum") -> None:
        if backward not in ("sum", "local", "none"):
            raise ValueError(f"backward must be 'sum', 'local' or 'none'; got {backward!r}")
        self.group, self.backward = group, backward

    def _check(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "infonce_xp.torch.all_gather needs an initialised process group: call "
                "torch.distributed.init_process_group(...) first, or pass gather=None"
            )

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        self._check()
        gathered: torch.Tensor = _AllGatherFunction.apply(tensor, self.group, self.backward)  # type: ignore[no-untyped-call]
        return gathered

    def rank(self) -> int:
        """This worker's block index in the gathered tensor."""
        self._check()
        return int(dist.get_rank(self.group))

    def size(self) -> int:
        """The number of workers."""
        self._check()
        return int(dist.get_world_size(self.group))

    def shift(self, tensor: torch.Tensor) -> torch.Tensor:
        """Send ``tensor`` to the next worker of the ring and return the previous worker's (of
        the same shape; no gradient): one batched point-to-point send and receive, for
        ``exchange="ring"``, whose gradients always follow the "sum" convention."""
        self._check()
        world, rank = self.size(), self.rank()
        peers = [(rank + 1) % world, (rank - 1) % world]
        if self.group is not None:
            peers = [dist.get_global_rank(self.group, peer) for peer in peers]
        out = torch.empty_like(tensor)
        ops = [
            dist.P2POp(dist.isend, tensor.contiguous(), peers[0], group=self.group),
            dist.P2POp(dist.irecv, out, peers[1], group=self.group),
        ]
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        return out

    def __repr__(self) -> str:
        shown = [] if self.group is None else [f"group={self.group!r}"]
        shown += [] if self.backward == "sum" else [f"backward={self.backward!r}"]
        return f"AllGather({', '.join(shown)})" if shown else "all_gather"


all_gather = AllGather()
"""Differentiable all-gather over the default process group (an :class:`AllGather`)."""
