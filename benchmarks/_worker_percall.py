"""The per-call section's measurements, run by ``_worker.py`` in a child process like the others.

Per-call time of PyTorch eager and ``torch.compile``, JAX eager and NumPy against hand-written
versions of the same math, and the kernel counts of every mode.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from _worker import interleaved, jax_hand_written, torch_setup

# --- PyTorch eager and compiled -------------------------------------------------------------


def loss_of(impl: str) -> Callable[..., Any]:
    if impl.startswith("seed"):
        from info_nce import info_nce as seed_info_nce

        return seed_info_nce
    from infonce_xp import info_nce

    return info_nce


def torch_percall_step(impl: str, n: int, dim: int) -> tuple[Callable[[], None], dict[str, Any]]:
    """Forward+backward of ``impl`` (``floor``, ``infonce_xp``, ``seed``, ``... compiled``).

    A compiled loss is ``torch.compile(fullgraph=True, dynamic=False)``, compiled on its first
    call here; if that fails, ``fullgraph=False``. Returns the step and how it was compiled
    (``fullgraph``, ``seconds`` and the ``failure`` that made it fall back, if any).
    """
    torch = torch_setup()
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(n, dim, generator=gen, requires_grad=True)
    key = torch.randn(n, dim, generator=gen, requires_grad=True)
    if impl == "floor":
        upstream = torch.randn(n, n, generator=gen)

        def floor() -> None:
            query.grad = key.grad = None
            (query @ key.T).backward(upstream)

        return floor, {}

    def step_of(loss: Callable[..., Any]) -> Callable[[], None]:
        def step() -> None:
            query.grad = key.grad = None
            loss(query, key).backward()

        return step

    loss = loss_of(impl)
    if not impl.endswith("compiled"):
        return step_of(loss), {}
    failure = ""
    for fullgraph in (True, False):
        step = step_of(torch.compile(loss, fullgraph=fullgraph, dynamic=False))
        start = time.perf_counter()
        try:
            step()
        except Exception as error:  # any failure to compile is reported
            failure = f"{type(error).__name__}: {str(error).splitlines()[0][:150]}"
            continue
        seconds = time.perf_counter() - start
        return step, {"fullgraph": fullgraph, "seconds": seconds, "failure": failure}
    raise RuntimeError(f"torch.compile failed: {failure}")


def percall_torch(spec: dict[str, Any]) -> dict[str, Any]:
    """Interleaved forward+backward times of eager and compiled losses at each size."""
    import torch._dynamo

    rows = []
    for n, dim in spec["sizes"]:
        torch._dynamo.reset()  # a fresh graph per size: no recompile limit, no dynamic shapes
        steps, compiled = {}, {}
        for impl in spec["impls"]:
            try:
                steps[impl], compiled[impl] = torch_percall_step(impl, n, dim)
            except RuntimeError as error:
                compiled[impl] = {"failure": str(error)}
        times = interleaved(steps, spec["budget_s"])
        rows.append({"n": n, "d": dim, "times": times, "compiled": compiled})
        del steps
        gc.collect()
    return {"rows": rows}


# --- JAX eager and NumPy against hand-written versions -----------------------------------------


def percall_jax(spec: dict[str, Any]) -> dict[str, Any]:
    """Eager (not jitted) ``value_and_grad`` of infonce_xp and of the hand-written loss."""
    import jax
    import jax.numpy as jnp

    from infonce_xp import info_nce

    def ours(query: Any, key: Any) -> Any:
        return info_nce(query, key)

    rows = []
    for n in spec["ns"]:
        query = jax.random.normal(jax.random.key(0), (n, spec["d"]), dtype=jnp.float32)
        key = jax.random.normal(jax.random.key(1), (n, spec["d"]), dtype=jnp.float32)
        steps = {}
        for name, fn in (("infonce_xp", ours), ("hand_written", jax_hand_written)):
            grad = jax.value_and_grad(fn, argnums=(0, 1))
            steps[name] = lambda f=grad, q=query, k=key: jax.block_until_ready(f(q, k))
        rows.append({"n": n, "d": spec["d"], "times": interleaved(steps, spec["budget_s"])})
    return {"rows": rows}


def numpy_value_and_grad(query: Any, key: Any, temperature: float = 0.1) -> Any:
    """The loss and its analytic gradient written by hand in NumPy (in-batch, mean)."""
    import numpy as np

    q_norm = np.maximum(np.sqrt(np.sum(query * query, axis=1, keepdims=True)), 1e-12)
    k_norm = np.maximum(np.sqrt(np.sum(key * key, axis=1, keepdims=True)), 1e-12)
    q, k = query / q_norm, key / k_norm
    logits = q @ k.T / temperature
    top = np.max(logits, axis=1, keepdims=True)
    weights = np.exp(logits - top)
    total = np.sum(weights, axis=1, keepdims=True)
    n = logits.shape[0]
    loss = np.mean(np.log(total[:, 0]) + top[:, 0] - np.diagonal(logits))
    weights /= total  # softmax; minus one at the positives, over N and the temperature
    weights[np.arange(n), np.arange(n)] -= 1
    weights /= n * temperature
    grad_q, grad_k = weights @ k, weights.T @ q
    grad_q = (grad_q - q * np.sum(grad_q * q, axis=1, keepdims=True)) / q_norm
    grad_k = (grad_k - k * np.sum(grad_k * k, axis=1, keepdims=True)) / k_norm
    return loss, (grad_q, grad_k)


def percall_numpy(spec: dict[str, Any]) -> dict[str, Any]:
    """``info_nce_value_and_grad`` against ``numpy_value_and_grad``."""
    import numpy as np

    from infonce_xp import info_nce_value_and_grad

    rng = np.random.default_rng(0)
    rows = []
    for n in spec["ns"]:
        query, key = rng.standard_normal((2, n, spec["d"]), dtype=np.float32)
        steps = {
            "infonce_xp": lambda q=query, k=key: info_nce_value_and_grad(q, k),
            "hand_written": lambda q=query, k=key: numpy_value_and_grad(q, k),
        }
        rows.append({"n": n, "d": spec["d"], "times": interleaved(steps, spec["budget_s"])})
    return {"rows": rows}


# --- kernel counts ----------------------------------------------------------------------------


def kernel_counts(spec: dict[str, Any]) -> dict[str, Any]:
    """Computing ATen ops of one forward+backward per mode, infonce_xp against the seed.

    The seed has no symmetric option: its symmetric loss is the mean of both directions.
    """
    from info_nce import info_nce as seed
    from kernels import count_kernels

    from infonce_xp import info_nce as ours

    torch = torch_setup()
    n, m, dim = spec["size"]
    gen = torch.Generator().manual_seed(0)
    query, key = (torch.randn(n, dim, generator=gen, requires_grad=True) for _ in range(2))
    shared = torch.randn(m, dim, generator=gen)
    own = torch.randn(n, m, dim, generator=gen)

    def step(loss: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], None]:
        def run() -> None:
            for array in (query, key, *args):
                array.grad = None
            loss(query, key, *args, **kwargs).backward()

        return run

    def seed_symmetric(q: Any, k: Any) -> Any:
        return (seed(q, k) + seed(k, q)) / 2

    modes: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "in-batch": (step(ours), step(seed)),
        "symmetric in-batch": (step(ours, symmetric=True), step(seed_symmetric)),
    }
    for grad, suffix in ((True, ""), (False, ", negatives without grad")):
        unpaired, paired = shared.clone().requires_grad_(grad), own.clone().requires_grad_(grad)
        modes["unpaired" + suffix] = (step(ours, unpaired), step(seed, unpaired))
        paired_mode = {"negative_mode": "paired"}
        modes["paired" + suffix] = (
            step(ours, paired, **paired_mode),
            step(seed, paired, **paired_mode),
        )
    rows = []
    for mode, (ours_step, seed_step) in modes.items():
        counts = {"infonce_xp": count_kernels(ours_step), "seed": count_kernels(seed_step)}
        rows.append({"mode": mode, "counts": {k: dict(v) for k, v in counts.items()}})
    return {"rows": rows, "size": [n, m, dim]}


JOBS = {
    "percall_torch": percall_torch,
    "percall_jax": percall_jax,
    "percall_numpy": percall_numpy,
    "kernels": kernel_counts,
}
