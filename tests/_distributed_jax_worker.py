"""Worker of ``test_distributed_jax.py``: virtual CPU devices run the cases, save the results.

Not a test module. Run in a subprocess, because ``XLA_FLAGS`` must be set before JAX is
imported (and so that a hang is killed by the test's timeout)::

    python _distributed_jax_worker.py cases DIR        # every case on 2 and 4 of 4 devices
    python _distributed_jax_worker.py per-device-loss  # on the devices XLA_FLAGS gives

``cases``: the devices take their blocks of rows of every case of ``DIR/inputs.npz`` (see
``_distributed_cases.py``) under ``jax.shard_map`` + ``jax.jit`` (or ``jax.pmap``), and the
losses and gradients go to ``DIR/jax.npz``, the errors of the cases that raised to
``DIR/jax-errors.json``. ``per-device-loss``: see ``per_device_loss``; prints ``ok``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from _distributed_cases import CASES, INPUTS, JAX_WORLDS, LABELS, Case, call, key, read_inputs


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
    case: Case, inputs: dict[str, np.ndarray], k: str, world: int, pattern: str
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
    names = [n for n in INPUTS if f"{k}/{n}" in inputs]
    arrays = [jnp.asarray(inputs[f"{k}/{n}"]) for n in names]
    labelled = [n for n in LABELS if f"{k}/{n}" in inputs]  # sharded too, not differentiated
    arrays += [jnp.asarray(inputs[f"{k}/{n}"]) for n in labelled]
    none = case.reduction == "none"
    grad_output = jnp.asarray(inputs[f"{k}/grad_output"]) if none else jnp.ones((world,))
    t = float(inputs[f"{k}/temperature"])
    temperature = jnp.asarray(t) if case.learn else None
    opts = case.options()

    def objective(grad_output: Any, temperature: Any, *args: Any) -> tuple[Any, Any]:
        temp = t if temperature is None else temperature
        args, labels = args[: len(names)], dict(zip(labelled, args[len(names) :]))
        if case.recipe:
            loss = call(case, list(args), labels, temp, gather)
        elif case.api == "class":
            loss = infonce_xp.InfoNCE(temp, gather=gather, **opts)(*args)
        else:
            loss = infonce_xp.info_nce(*args, temperature=temp, gather=gather, **opts)
        value = jnp.sum(loss * (grad_output if none else grad_output[0]))
        if pattern == "reduced":
            mean = case.reduction == "mean"
            value = jax.lax.pmean(value, "batch") if mean else jax.lax.psum(value, "batch")
        return value, loss

    def body(grad_output: Any, temperature: Any, *args: Any) -> tuple[Any, ...]:
        argnums = (() if temperature is None else (1,)) + tuple(range(2, 2 + len(names)))
        if case.api == "value_and_grad":
            loss, g = infonce_xp.info_nce_value_and_grad(
                *args, temperature=t if temperature is None else temperature, **opts,
                grad_output=grad_output if none else grad_output[0], gather=gather,
            )  # fmt: skip
            grads = [getattr(g, n) for n in names]
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
        *(P("batch") for _ in names),
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
    for n, g in zip(names, rest):
        result[n] = np.asarray(g)
    return result


def run_cases(directory: Path) -> None:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    import jax

    jax.config.update("jax_enable_x64", True)
    # Some 50 tiny programs are compiled: XLA's optimisation passes would take most of the time.
    jax.config.update("jax_disable_most_optimizations", True)
    inputs = read_inputs(directory)
    errors: dict[str, str] = {}
    results: dict[str, np.ndarray] = {}
    for world in JAX_WORLDS:
        for name, case in CASES.items():
            for pattern in case.jax:
                prefix = f"{key(world, name)}/{pattern}"
                try:
                    for field, value in jax_case(
                        case, inputs, key(world, name), world, pattern
                    ).items():
                        results[f"{prefix}/{field}"] = value
                except Exception:
                    errors[prefix] = traceback.format_exc(limit=-4)
    np.savez(directory / "jax.npz", **results)
    (directory / "jax-errors.json").write_text(json.dumps(errors))


def per_device_loss() -> None:
    """Under shard_map(check_vma=True), a local loss with a replicated temperature and tiles.

    No gather: each device scores its own rows; the replicated temperature gets the psum of the
    devices' gradients (2 devices: twice the gradient of the mean loss), tiled or not.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from infonce_xp import info_nce
    from reference import reference_rows

    mesh = Mesh(np.asarray(jax.devices()), ("b",))
    q, k = np.random.default_rng(0).normal(size=(2, 8, 4)).astype(np.float32)
    t = jnp.asarray(0.1)
    step = 1e-3
    numeric = sum(
        (
            reference_rows(q[i : i + 4], k[i : i + 4], temperature=0.1 + step).mean()
            - reference_rows(q[i : i + 4], k[i : i + 4], temperature=0.1 - step).mean()
        )
        / (2 * step)
        / 2
        for i in (0, 4)
    )
    for chunk_size in (None, 2):

        def f(q: Any, k: Any, t: Any, chunk_size: int | None = chunk_size) -> Any:
            return jax.grad(
                lambda t: jax.lax.pmean(info_nce(q, k, temperature=t, chunk_size=chunk_size), "b")
            )(t)

        got = shard_map(f, mesh, (P("b"), P("b"), P()), P(), check_vma=True)(q, k, t)
        np.testing.assert_allclose(float(got), numeric, rtol=1e-3)
    print("ok")


if __name__ == "__main__":
    if sys.argv[1] == "cases":
        run_cases(Path(sys.argv[2]))
    elif sys.argv[1] == "per-device-loss":
        per_device_loss()
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}: cases DIR or per-device-loss")
