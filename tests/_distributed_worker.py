"""Worker side of ``tests/test_distributed.py``: runs the loss on several workers, saves the results.

Not a test module. ``test_distributed.py`` writes the cases (``cases.json``) and the full-batch
inputs (``inputs.npz``) to a directory and runs this file in a subprocess, so that a hang is
killed by a timeout and ``XLA_FLAGS`` is set before JAX is imported:

    python _distributed_worker.py torch WORLD PORT DIR   # WORLD processes (gloo, spawned)
    python _distributed_worker.py jax DIR                 # 4 virtual CPU devices

Each worker takes its block of rows of every input, computes its local loss with
``gather=all_gather`` and its gradients, and the results go to ``DIR/*.npz``; the test compares
them with the single-process loss on the full batch. Backend imports stay inside functions.
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

INPUTS = ("query", "positive_key", "negative_keys")


def load(directory: Path) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    cases = json.loads((directory / "cases.json").read_text())
    with np.load(directory / "inputs.npz") as data:
        inputs = {key: data[key] for key in data.files}
    return cases, inputs


def local_block(
    case: dict[str, Any], inputs: dict[str, np.ndarray], name: str, rank: int, world: int
) -> dict[str, np.ndarray]:
    """This worker's rows: of the queries, their keys and paired negatives, and of unpaired negatives."""
    out = {}
    for key in (*INPUTS, "grad_output"):
        full = inputs.get(f"{name}/{key}")
        if full is None:
            continue
        rows = full.shape[0] // world
        out[key] = full[rank * rows : (rank + 1) * rows]
    out["temperature"] = inputs[f"{name}/temperature"]
    return out


def options(case: dict[str, Any]) -> dict[str, Any]:
    return {
        "reduction": case["reduction"],
        "negative_mode": case["negatives"] or "unpaired",
        "symmetric": case["symmetric"],
        "chunk_size": case["chunk_size"],
    }


# --------------------------------------------------------------------------------------- torch


def torch_case(case: dict[str, Any], block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
    temperature: Any = (
        torch.tensor(t, dtype=torch.float64, requires_grad=True) if case["learn"] else t
    )
    args = [tensors[k] for k in INPUTS if k in tensors]
    opts = options(case)
    api = case["api"]
    out: dict[str, np.ndarray] = {}
    if api == "value_and_grad":
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
    if api == "module":
        module = it.InfoNCE(t, learn_temperature=True, gather=it.all_gather, **opts).double()
        loss = module(*args)
    elif api == "class":
        loss = infonce_xp.InfoNCE(temperature, gather=it.all_gather, **opts)(*args)
    else:
        loss = infonce_xp.info_nce(*args, temperature=temperature, gather=it.all_gather, **opts)
    loss.backward(grad_output)
    out["loss"] = loss.detach().numpy()
    for k, x in tensors.items():
        out[k] = x.grad.numpy()
    if api == "module":
        out["log_inverse_temperature"] = module.log_inverse_temperature.grad.numpy()
    elif case["learn"]:
        out["temperature"] = temperature.grad.numpy()
    return out


def torch_errors(rank: int) -> dict[str, str]:
    """What a gather of unequal local batch sizes raises (rank r holds 4 + r rows)."""
    import torch

    import infonce_xp
    import infonce_xp.torch as it

    q, k = torch.randn(2, 4 + rank, 8, dtype=torch.float64)
    try:
        infonce_xp.info_nce(q, k, gather=it.all_gather)
    except Exception as err:
        return {"unequal_batch": f"{type(err).__name__}: {err}"}
    return {"unequal_batch": "no error"}


def torch_worker(rank: int, world: int, port: int, directory: str) -> None:
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
        cases, inputs = load(Path(directory))
        results = {"rank": np.asarray(it.all_gather.rank())}
        errors = torch_errors(rank)
        for name, case in cases.items():
            if case["world"] != world or "torch" not in case["backends"]:
                continue
            block = local_block(case, inputs, name, rank, world)
            try:  # a failure is the same on every rank, so the ranks stay in step
                for key, value in torch_case(case, block).items():
                    results[f"{name}/{key}"] = value
            except Exception:
                errors[name] = traceback.format_exc(limit=-4)
        np.savez(Path(directory) / f"torch-{world}-rank{rank}.npz", **results)
        (Path(directory) / f"torch-{world}-rank{rank}-errors.json").write_text(json.dumps(errors))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_torch(world: int, port: int, directory: str) -> None:
    import torch.multiprocessing as mp

    mp.spawn(torch_worker, args=(world, port, directory), nprocs=world, join=True)


# ----------------------------------------------------------------------------------------- JAX


def shard_map(f: Any, mesh: Any, in_specs: Any, out_specs: Any, check_vma: bool) -> Any:
    """``jax.shard_map`` (JAX >= 0.7, ``check_vma``) or the older experimental one (``check_rep``)."""
    import jax

    if hasattr(jax, "shard_map"):
        return jax.shard_map(
            f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma
        )
    from jax.experimental.shard_map import shard_map as legacy

    return legacy(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check_vma)


def jax_case(
    case: dict[str, Any], inputs: dict[str, np.ndarray], name: str, world: int, pattern: str
) -> dict[str, np.ndarray]:
    """Per-device losses and gradients, concatenated over ``world`` devices.

    Patterns: ``reduced`` differentiates the mean (or, for ``reduction="none"``, the sum) of
    the devices' objectives under ``shard_map`` with ``check_vma=True``, so gradients equal the
    single-process ones; ``local`` / ``local-novma`` differentiate each device's own objective
    (what a DDP-style step does), with ``check_vma`` on / off; ``pmap`` the same under
    ``jax.pmap``. The temperature gradient returned is always the sum over devices.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    import infonce_xp
    from infonce_xp.jax import all_gather

    gather = all_gather("batch")
    names = [k for k in INPUTS if f"{name}/{k}" in inputs]
    arrays = [jnp.asarray(inputs[f"{name}/{k}"]) for k in names]
    none = case["reduction"] == "none"
    grad_output = jnp.asarray(inputs[f"{name}/grad_output"]) if none else jnp.ones((world,))
    t = float(inputs[f"{name}/temperature"])
    temperature = jnp.asarray(t) if case["learn"] else None
    opts = options(case)

    def objective(grad_output: Any, temperature: Any, *args: Any) -> tuple[Any, Any]:
        temp = t if temperature is None else temperature
        if case["api"] == "class":
            loss = infonce_xp.InfoNCE(temp, gather=gather, **opts)(*args)
        else:
            loss = infonce_xp.info_nce(*args, temperature=temp, gather=gather, **opts)
        value = jnp.sum(loss * (grad_output if none else grad_output[0]))
        if pattern == "reduced":
            mean = case["reduction"] == "mean"
            value = jax.lax.pmean(value, "batch") if mean else jax.lax.psum(value, "batch")
        return value, loss

    def body(grad_output: Any, temperature: Any, *args: Any) -> tuple[Any, ...]:
        argnums = (() if temperature is None else (1,)) + tuple(range(2, 2 + len(args)))
        if case["api"] == "value_and_grad":
            loss, g = infonce_xp.info_nce_value_and_grad(
                *args, temperature=t if temperature is None else temperature, **opts,
                grad_output=grad_output if none else grad_output[0], gather=gather,
            )  # fmt: skip
            grads = [getattr(g, k) for k in names]
            if temperature is not None:
                grads.insert(0, g.temperature)
        else:
            (_, loss), grads = jax.value_and_grad(objective, argnums=argnums, has_aux=True)(
                grad_output, temperature, *args
            )
            grads = list(grads)
        if temperature is not None and pattern in ("local-novma", "pmap"):
            grads[0] = jax.lax.psum(grads[0], "batch")  # without vma typing it stays per device
        return (loss if none else loss[None], *grads)

    specs_in: tuple[Any, ...] = (P("batch"), P(), *(P("batch") for _ in arrays))
    specs_out: tuple[Any, ...] = (
        P("batch"),
        *([P()] if temperature is not None else []),
        *(P("batch") for _ in arrays),
    )
    if pattern == "pmap":

        def split(x: Any) -> Any:
            return x.reshape(world, -1, *x.shape[1:])

        def unsplit(x: Any) -> Any:
            return x.reshape(-1, *x.shape[2:])

        mapped = jax.pmap(
            body,
            axis_name="batch",
            in_axes=(0, None, *(0 for _ in arrays)),
            devices=jax.devices()[:world],
        )
        outs = list(mapped(split(grad_output), temperature, *(split(a) for a in arrays)))
        outs = [unsplit(outs[0])] + [
            o[0] if (temperature is not None and i == 0) else unsplit(o)
            for i, o in enumerate(outs[1:])
        ]
    else:
        mesh = Mesh(np.asarray(jax.devices()[:world]), ("batch",))
        fn = jax.jit(shard_map(body, mesh, specs_in, specs_out, check_vma=pattern != "local-novma"))
        outs = list(fn(grad_output, temperature, *arrays))
    result = {"loss": np.asarray(outs[0])}
    rest = outs[1:]
    if temperature is not None:
        result["temperature"] = np.asarray(rest[0])
        rest = rest[1:]
    for k, g in zip(names, rest):
        result[k] = np.asarray(g)
    return result


def run_jax(directory: str) -> None:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    import jax

    jax.config.update("jax_enable_x64", True)
    # Some 50 tiny programs are compiled: XLA's optimisation passes would take most of the time.
    jax.config.update("jax_disable_most_optimizations", True)
    cases, inputs = load(Path(directory))
    errors: dict[str, str] = {}
    results: dict[str, np.ndarray] = {}
    for name, case in cases.items():
        if "jax" not in case["backends"]:
            continue
        for pattern in case["jax_patterns"]:
            key = f"{name}/{pattern}"
            try:
                for k, v in jax_case(case, inputs, name, case["world"], pattern).items():
                    results[f"{key}/{k}"] = v
            except Exception:
                errors[key] = traceback.format_exc(limit=-4)
    np.savez(Path(directory) / "jax.npz", **results)
    (Path(directory) / "jax-errors.json").write_text(json.dumps(errors))


if __name__ == "__main__":
    if sys.argv[1] == "torch":
        run_torch(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        run_jax(sys.argv[2])
