"""Peers that the test environments do not install, ported as test references (torch).

lightly and open-clip-torch require a newer torch than the one the tests pin, so their loss
code is ported here, line for line where it computes, with its source named. Only the
single-process paths are ported.
"""

from __future__ import annotations

from typing import Any


def lightly_ntxent(out0: Any, out1: Any, temperature: float = 0.5) -> Any:
    """lightly 1.5 ``lightly/loss/ntx_ent_loss.py``, ``NTXentLoss.forward`` without a memory
    bank, in one process."""
    import torch
    from torch import nn

    batch_size, _ = out0.shape
    out0 = nn.functional.normalize(out0, dim=1)
    out1 = nn.functional.normalize(out1, dim=1)
    diag_mask = torch.eye(batch_size, device=out0.device, dtype=torch.bool)
    logits_00 = torch.einsum("nc,mc->nm", out0, out0) / temperature
    logits_01 = torch.einsum("nc,mc->nm", out0, out1) / temperature
    logits_10 = torch.einsum("nc,mc->nm", out1, out0) / temperature
    logits_11 = torch.einsum("nc,mc->nm", out1, out1) / temperature
    logits_00 = logits_00[~diag_mask].view(batch_size, -1)
    logits_11 = logits_11[~diag_mask].view(batch_size, -1)
    logits_0100 = torch.cat([logits_01, logits_00], dim=1)
    logits_1011 = torch.cat([logits_10, logits_11], dim=1)
    logits = torch.cat([logits_0100, logits_1011], dim=0)
    labels = torch.arange(batch_size, device=out0.device, dtype=torch.long).repeat(2)
    return nn.functional.cross_entropy(logits, labels)


def lightly_dcl(
    out0: Any, out1: Any, temperature: float = 0.1, sigma: Any = None, gathered: bool = False
) -> Any:
    """lightly 1.5 ``lightly/loss/dcl_loss.py``, ``DCLLoss.forward`` (``DCLWLoss`` with
    ``sigma``: ``negative_mises_fisher_weights``); ``gathered``: ``gather_distributed=True``
    under ``torch.distributed``."""
    import torch
    from torch import nn

    def weights(a: Any, b: Any) -> Any:
        similarity = torch.einsum("nm,nm->n", a.detach(), b.detach()) / sigma
        return 2 - a.shape[0] * nn.functional.softmax(similarity, dim=0)

    def one(a: Any, b: Any, a_all: Any, b_all: Any) -> Any:
        batch_size = a.shape[0]
        diag_mask = torch.eye(batch_size, device=a.device, dtype=torch.bool)
        if gathered:  # eye_rank
            import torch.distributed as dist

            diag_mask = torch.zeros(batch_size, a_all.shape[0], dtype=torch.bool)
            rows = torch.arange(batch_size)
            diag_mask[rows, dist.get_rank() * batch_size + rows] = True
        sim_00 = torch.einsum("nc,mc->nm", a, a_all) / temperature
        sim_01 = torch.einsum("nc,mc->nm", a, b_all) / temperature
        positive_loss = -sim_01[diag_mask]
        if sigma is not None:
            positive_loss = positive_loss * weights(a, b)
        sim_00 = sim_00[~diag_mask].view(batch_size, -1)
        sim_01 = sim_01[~diag_mask].view(batch_size, -1)
        negative_loss_00 = torch.logsumexp(sim_00, dim=1)
        negative_loss_01 = torch.logsumexp(sim_01, dim=1)
        return (positive_loss + negative_loss_00 + negative_loss_01).mean()

    out0 = nn.functional.normalize(out0, dim=1)
    out1 = nn.functional.normalize(out1, dim=1)
    out0_all, out1_all = out0, out1
    if gathered:
        out0_all, out1_all = lightly_gather(out0), lightly_gather(out1)
    return 0.5 * (one(out0, out1, out0_all, out1_all) + one(out1, out0, out1_all, out0_all))


def open_clip_loss(
    image_features: Any,
    text_features: Any,
    logit_scale: Any,
    local_loss: bool = False,
    gather_with_grad: bool = False,
) -> Any:
    """open_clip 3.x ``src/open_clip/loss.py``, ``ClipLoss.forward`` (with ``gather_features``
    under ``torch.distributed``, without horovod, when a process group runs)."""
    import torch
    import torch.distributed as dist
    import torch.distributed.nn
    from torch.nn import functional as F

    world_size = dist.get_world_size() if dist.is_initialized() else 1
    if world_size > 1:
        rank = dist.get_rank()
        if gather_with_grad:
            all_image_features = torch.cat(torch.distributed.nn.all_gather(image_features), dim=0)
            all_text_features = torch.cat(torch.distributed.nn.all_gather(text_features), dim=0)
        else:
            gathered_image_features = [torch.zeros_like(image_features) for _ in range(world_size)]
            gathered_text_features = [torch.zeros_like(text_features) for _ in range(world_size)]
            dist.all_gather(gathered_image_features, image_features)
            dist.all_gather(gathered_text_features, text_features)
            if not local_loss:
                gathered_image_features[rank] = image_features
                gathered_text_features[rank] = text_features
            all_image_features = torch.cat(gathered_image_features, dim=0)
            all_text_features = torch.cat(gathered_text_features, dim=0)
        if local_loss:
            logits_per_image = logit_scale * image_features @ all_text_features.T
            logits_per_text = logit_scale * text_features @ all_image_features.T
        else:
            logits_per_image = logit_scale * all_image_features @ all_text_features.T
            logits_per_text = logits_per_image.T
    else:
        logits_per_image = logit_scale * image_features @ text_features.T
        logits_per_text = logit_scale * text_features @ image_features.T
    num_logits = logits_per_image.shape[0]
    labels = torch.arange(num_logits, device=image_features.device, dtype=torch.long)
    if world_size > 1 and local_loss:
        labels = labels + num_logits * dist.get_rank()
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2


def lightly_gather(x: Any) -> Any:
    """lightly ``lightly/utils/dist.py``: ``torch.cat(gather(x), 0)`` through its
    ``GatherLayer`` (forward: all-gather; backward: all-reduce of the stacked gradients, this
    process's row block of the sum)."""
    import torch
    import torch.distributed as dist

    class GatherLayer(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, input: Any) -> Any:
            output = [torch.empty_like(input) for _ in range(dist.get_world_size())]
            dist.all_gather(output, input)
            return tuple(output)

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:
            all_gradients = torch.stack(grads)
            dist.all_reduce(all_gradients)
            return all_gradients[dist.get_rank()]

    return torch.cat(GatherLayer.apply(x), 0)


def lightly_ntxent_gathered(out0: Any, out1: Any, temperature: float = 0.5) -> Any:
    """lightly 1.5 ``NTXentLoss.forward`` with ``gather_distributed=True`` (no memory bank)."""
    import torch
    import torch.distributed as dist
    from torch import nn

    batch_size = out0.shape[0]
    out0 = nn.functional.normalize(out0, dim=1)
    out1 = nn.functional.normalize(out1, dim=1)
    out0_large, out1_large = lightly_gather(out0), lightly_gather(out1)
    rank = dist.get_rank()
    diag_mask = torch.zeros(batch_size, out0_large.shape[0], dtype=torch.bool)  # eye_rank
    diag_mask[torch.arange(batch_size), rank * batch_size + torch.arange(batch_size)] = True
    logits_00 = torch.einsum("nc,mc->nm", out0, out0_large) / temperature
    logits_01 = torch.einsum("nc,mc->nm", out0, out1_large) / temperature
    logits_10 = torch.einsum("nc,mc->nm", out1, out0_large) / temperature
    logits_11 = torch.einsum("nc,mc->nm", out1, out1_large) / temperature
    logits_00 = logits_00[~diag_mask].view(batch_size, -1)
    logits_11 = logits_11[~diag_mask].view(batch_size, -1)
    logits = torch.cat(
        [torch.cat([logits_01, logits_00], dim=1), torch.cat([logits_10, logits_11], dim=1)]
    )
    labels = (torch.arange(batch_size) + rank * batch_size).repeat(2)
    return nn.functional.cross_entropy(logits, labels)
