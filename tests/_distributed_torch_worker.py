"""Worker of ``test_distributed_torch.py``: WORLD gloo processes run every case, save the results.

Not a test module. Run in a subprocess, so that a hung collective is killed by the test's
timeout::

    python _distributed_torch_worker.py WORLD PORT DIR

Each rank takes its block of rows of every case of ``DIR/inputs.npz`` (see
``_distributed_cases.py``), computes its local loss with ``gather=all_gather`` and its
gradients, and saves them to ``DIR/torch-WORLD-rankR.npz``, with the errors of the cases that
raised in ``DIR/torch-WORLD-rankR-errors.json``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from _distributed_cases import CASES, INPUTS, LABELS, Case, call, key, local_block, read_inputs


def torch_case(case: Case, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One worker's loss and gradients for one case (torch autograd through the gather)."""
    import torch

    import infonce_xp
    import infonce_xp.torch as it

    tensors = {k: torch.tensor(block[k], requires_grad=True) for k in INPUTS if k in block}
    grad_output = (
        torch.tensor(block["grad_output"])
        if "grad_output" in block
        else torch.tensor(1.0, dtype=torch.float64)
    )
    t = float(block["temperature"])
    temperature: Any = torch.tensor(t, dtype=torch.float64, requires_grad=True) if case.learn else t
    args = [tensors[k] for k in INPUTS if k in tensors]
    opts = case.options()
    out: dict[str, np.ndarray] = {}
    if case.api == "value_and_grad":
        loss, grads = infonce_xp.info_nce_value_and_grad(
            *(a.detach() for a in args),
            temperature=temperature,
            **opts,
            grad_output=grad_output,
            gather=it.all_gather,
        )
        for k in INPUTS:
            if getattr(grads, k) is not None:
                out[k] = getattr(grads, k).numpy()
        if grads.temperature is not None:
            out["temperature"] = grads.temperature.numpy()
        out["loss"] = loss.numpy()
        return out
    if case.api == "module":
        module = it.InfoNCE(t, learn_temperature=True, gather=it.all_gather, **opts).double()
        loss = module(*args)
    elif case.recipe:
        labels = {n: torch.asarray(block[n]) for n in LABELS if n in block}
        loss = call(case, args, labels, temperature, it.all_gather)
    elif case.api == "class":
        loss = infonce_xp.InfoNCE(temperature, gather=it.all_gather, **opts)(*args)
    else:
        loss = infonce_xp.info_nce(*args, temperature=temperature, gather=it.all_gather, **opts)
    loss.backward(grad_output)
    out["loss"] = loss.detach().numpy()
    for k, x in tensors.items():
        out[k] = x.grad.numpy()
    if case.api == "module":
        out["log_inverse_temperature"] = module.log_inverse_temperature.grad.numpy()
    elif case.learn:
        out["temperature"] = temperature.grad.numpy()
    return out


def unequal_batch_error(rank: int) -> str:
    """What a gather of unequal local batch sizes raises (rank r holds 4 + r rows)."""
    import torch

    import infonce_xp
    import infonce_xp.torch as it

    q, k = torch.randn(2, 4 + rank, 8, dtype=torch.float64)
    try:
        infonce_xp.info_nce(q, k, gather=it.all_gather)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return "no error"


def worker(rank: int, world: int, port: int, directory: Path) -> None:
    import torch
    import torch.distributed as dist

    import infonce_xp.torch as it

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        inputs = read_inputs(directory)
        results = {"rank": np.asarray(it.all_gather.rank())}
        errors = {"unequal_batch": unequal_batch_error(rank)}
        for name, case in CASES.items():
            k = key(world, name)
            try:  # a failure is the same on every rank, so the ranks stay in step
                for field, value in torch_case(case, local_block(inputs, k, rank, world)).items():
                    results[f"{k}/{field}"] = value
            except Exception:
                errors[k] = traceback.format_exc(limit=-4)
        np.savez(directory / f"torch-{world}-rank{rank}.npz", **results)
        (directory / f"torch-{world}-rank{rank}-errors.json").write_text(json.dumps(errors))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's finalization: gloo's threads, torn down there, now and
    # then abort a process ("terminate called without an active exception") after every
    # result is written and the group destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(world: int, port: int, directory: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(world, port, directory), nprocs=world, join=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
