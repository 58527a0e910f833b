"""Data-parallel contrastive training with PyTorch DDP: 2 CPU processes (gloo), keys shared.

    python examples/ddp_step.py

Each process encodes its own 16 samples (two noisy views of each), and every query is scored
against the keys of both processes (32 candidates), through ``gather=all_gather``. The learned
temperature is a parameter of the loss module, which sits inside the DDP-wrapped model so that
DDP averages its gradient like the encoder's.
"""

from __future__ import annotations

import gc
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from infonce_xp.torch import InfoNCE, all_gather

WORLD_SIZE, LOCAL_BATCH, FEATURES, EMBEDDING, STEPS = 2, 16, 32, 16, 5


class Contrastive(nn.Module):
    """A tiny encoder and the loss; forward returns this worker's loss."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, EMBEDDING))
        self.loss_fn = InfoNCE(temperature=0.1, learn_temperature=True, gather=all_gather)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.encoder(view1), self.encoder(view2))


def worker(rank: int, world_size: int, port: int) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway
    model = DistributedDataParallel(Contrastive())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(1 + rank)  # each worker its own samples
    samples = torch.randn(LOCAL_BATCH, FEATURES, generator=data)

    for step in range(STEPS):
        view1 = samples + 0.3 * torch.randn(samples.shape, generator=data)
        view2 = samples + 0.3 * torch.randn(samples.shape, generator=data)
        loss = model(view1, view2)  # this worker's queries against all 32 keys
        optimizer.zero_grad()
        loss.backward()  # all_gather's backward sums key gradients; DDP averages the rest
        optimizer.step()

        # The mean of the workers' losses is the loss of the whole batch of 32.
        total = loss.detach().clone()
        dist.all_reduce(total)
        if rank == 0:
            temperature = model.module.loss_fn.temperature.item()
            print(
                f"step {step}: loss {total.item() / world_size:.4f} "
                f"(rank 0: {loss.item():.4f}), temperature {temperature:.4f}"
            )
    dist.barrier()  # nobody tears down while another is still communicating
    # DDP's reducer holds threads on the process group, and the last loss's graph holds the
    # reducer's hooks: release them all before the group goes.
    del model, optimizer, loss, total
    gc.collect()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    torch.set_num_threads(1)
    mp.spawn(worker, args=(WORLD_SIZE, free_port()), nprocs=WORLD_SIZE, join=True)
