"""Worker side of the DDP test in ``tests/test_grad_cache.py``: grad_cache on 2 gloo processes.

Not a test module. The test runs ``python _grad_cache_worker.py PORT DIR`` in a subprocess (so a
hung collective is killed by its timeout); this spawns 2 processes, each of which encodes its
half of the batch with ``grad_cache`` through a ``DistributedDataParallel`` encoder and
``InfoNCE(gather=all_gather)``, and saves its parameters' gradients, its loss and how many times
DDP all-reduced to ``DIR/rank{r}.pt``. The test compares them with the single-process gradient
of the whole batch (``full_batch`` below, shared with the test).
"""

from __future__ import annotations

import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from infonce_xp.torch import InfoNCE, all_gather, grad_cache

WORLD, ROWS, FEATURES, MICRO_BATCH, CHUNK = 2, 12, 8, 5, 7  # ROWS per worker


class Towers(nn.Module):
    """One MLP encoder shared by both views: ``(view1, view2) -> (query, key)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 6))

    def forward(self, views: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return self.net(views[0]), self.net(views[1])


def model_and_data() -> tuple[Towers, tuple[torch.Tensor, torch.Tensor]]:
    """The same model and the whole batch of WORLD * ROWS pairs in every process (float64)."""
    torch.manual_seed(0)
    model = Towers().double()
    data = torch.Generator().manual_seed(1)
    views = torch.randn(2, WORLD * ROWS, FEATURES, generator=data, dtype=torch.float64)
    return model, (views[0], views[1])


def full_batch() -> dict[str, torch.Tensor]:
    """Single process, whole batch, plain ``loss.backward()``: the gradients to match."""
    model, views = model_and_data()
    loss = InfoNCE(symmetric=True, chunk_size=CHUNK)(*model(views))
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, port: int, out: Path) -> None:
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=WORLD,
            timeout=timedelta(seconds=60),
        )
        model, views = model_and_data()
        ddp = nn.parallel.DistributedDataParallel(model)
        reductions = []

        def count(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks the annotations
            reductions.append(1)
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, count)
        local = tuple(v[rank * ROWS : (rank + 1) * ROWS] for v in views)
        loss_fn = InfoNCE(symmetric=True, chunk_size=CHUNK, gather=all_gather)
        loss = grad_cache(ddp, local, loss_fn, MICRO_BATCH)  # 3 micro-batches: 5, 5, 2
        grads = {name: p.grad for name, p in model.named_parameters()}
        torch.save(
            {"grads": grads, "loss": loss, "reductions": len(reductions)}, out / f"rank{rank}.pt"
        )
        dist.barrier()
        del ddp
        dist.destroy_process_group()
    except Exception:
        traceback.print_exc()
        raise


if __name__ == "__main__":
    port, directory = int(sys.argv[1]), Path(sys.argv[2])
    mp.spawn(worker, args=(port, directory), nprocs=WORLD, join=True)
