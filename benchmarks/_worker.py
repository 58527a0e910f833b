"""Measurements that run in a child process: one section's timings, or one case's peak memory.

``python benchmarks/_worker.py '<json spec>'`` runs the job the spec names and prints its result
as one JSON line starting with ``RESULT``. A child per job keeps each measurement clean: a fresh
allocator for peak memory, no idle thread pools of another library, its own environment.
"""

from __future__ import annotations

import gc
import json
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

RESULT = "RESULT "
CLEAR_REFS = "/proc/self/clear_refs"
THREADS: int | None = None  # torch's intra-op threads, from the spec; default: every core


# --- timing -------------------------------------------------------------------------------


def interleaved(
    steps: dict[str, Callable[[], Any]],
    budget_s: float,
    min_reps: int = 5,
    max_reps: int = 200,
    warmup: int = 2,
) -> dict[str, dict[str, float]]:
    """Median seconds of each step, the steps alternating within every repetition.

    Alternating (in a new random order each repetition) spreads slow drifts of the machine,
    such as other processes or clock changes, over all implementations alike. A fixed or
    rotated order would not: a step that always follows the same other step pays for what
    that one leaves behind (measured: the step run right after the seed's was ~10% slower
    at (8, 16), the same code in both places).
    """
    names = list(steps)
    round_s = 0.0
    for _ in range(warmup):
        start = time.perf_counter()
        for name in names:
            steps[name]()
        round_s = time.perf_counter() - start
    reps = int(min(max_reps, max(min_reps, budget_s / max(round_s, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)  # the same orders in every run
    for _ in range(reps):
        for name in order.sample(names, len(names)):
            start = time.perf_counter()
            steps[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: summary(times) for name, times in samples.items()}


def summary(times: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "median": statistics.median(times),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "reps": len(times),
    }


# --- peak memory --------------------------------------------------------------------------


def current_rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The peak resident set size of this process from ``reset()`` on.

    On Linux the kernel's high-water mark (VmHWM) is reset by writing 5 to
    /proc/self/clear_refs, so the peak of one call is exact. Elsewhere, ``ru_maxrss`` (the peak
    of the whole process) is used: valid as long as setting up the inputs peaked lower.
    """

    def __init__(self) -> None:
        self.method = "VmHWM" if os.access(CLEAR_REFS, os.W_OK) else "ru_maxrss"

    def reset(self) -> None:
        if self.method == "VmHWM":
            with open(CLEAR_REFS, "w") as f:
                f.write("5")

    def peak(self) -> int:
        if self.method == "VmHWM":
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# --- torch --------------------------------------------------------------------------------


def torch_setup() -> Any:
    import torch

    torch.set_num_threads(THREADS or os.cpu_count() or 1)
    return torch


def torch_step(impl: str, n: int, dim: int, chunk: int | None, seed: int = 0) -> Callable[[], None]:
    """Forward and backward (gradients of query and positive_key) of one implementation.

    ``floor`` is the bare logits ``q @ k.T`` and its backward under a fixed random upstream
    gradient: two more matrix products. No InfoNCE can do less work.
    """
    torch = torch_setup()
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(n, dim, generator=gen, requires_grad=True)
    key = torch.randn(n, dim, generator=gen, requires_grad=True)
    if impl == "floor":
        upstream = torch.randn(n, n, generator=gen)
        forward = lambda: query @ key.T  # noqa: E731
    elif impl == "seed":
        from info_nce import info_nce as seed_info_nce

        forward = lambda: seed_info_nce(query, key)  # noqa: E731
    else:
        from infonce_xp import info_nce

        tile = chunk if impl == "tiled" else None
        forward = lambda: info_nce(query, key, chunk_size=tile)  # noqa: E731

    def step() -> None:
        query.grad = key.grad = None
        out = forward()
        if impl == "floor":
            out.backward(upstream)
        else:
            out.backward()

    return step


def torch_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Interleaved forward+backward times of several implementations at several sizes."""
    rows = []
    for n, dim in spec["sizes"]:
        steps = {impl: torch_step(impl, n, dim, spec.get("chunk")) for impl in spec["impls"]}
        rows.append({"n": n, "d": dim, "times": interleaved(steps, spec["budget_s"])})
        del steps
        gc.collect()
    return {"rows": rows}


def torch_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS above the inputs of one forward+backward, then (within budget) its time."""
    impl, n, dim, chunk = spec["impl"], spec["n"], spec["d"], spec.get("chunk")
    torch_step(impl, 64, 16, chunk and min(chunk, 32))()  # load code paths, start thread pools
    return peak_of(torch_step(impl, n, dim, chunk), spec.get("budget_s", 0))


def peak_of(step: Callable[[], None], budget_s: float) -> dict[str, Any]:
    """Peak RSS above what is resident before one ``step()``, then (within budget) its time."""
    gc.collect()
    meter = PeakRSS()
    baseline = current_rss()
    meter.reset()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    peak = meter.peak()
    times = []
    spent = first
    while spent + first < budget_s and len(times) < 5:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return {
        "peak_bytes": max(peak - baseline, 0),
        "baseline_bytes": baseline,
        "method": meter.method,
        "time": summary(times or [first]),
    }


# --- JAX ----------------------------------------------------------------------------------


def jax_hand_written(query: Any, key: Any, temperature: float = 0.1) -> Any:
    """The loss written by hand in JAX: normalise, logits, ``jax.nn.logsumexp``."""
    import jax
    import jax.numpy as jnp

    query = query / jnp.maximum(jnp.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    key = key / jnp.maximum(jnp.linalg.norm(key, axis=1, keepdims=True), 1e-12)
    logits = query @ key.T / temperature
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diag(logits))


def jax_section(spec: dict[str, Any]) -> dict[str, Any]:
    """``jit(value_and_grad)`` of infonce_xp and of a hand-written ``logsumexp`` version."""
    import jax
    import jax.numpy as jnp

    from infonce_xp import info_nce

    def ours(query: Any, key: Any) -> Any:
        return info_nce(query, key)

    rows = []
    for n, dim in spec["sizes"]:
        query = jax.random.normal(jax.random.key(0), (n, dim), dtype=jnp.float32)
        key = jax.random.normal(jax.random.key(1), (n, dim), dtype=jnp.float32)
        temp, steps = {}, {}
        for name, fn in (("infonce_xp", ours), ("hand_written", jax_hand_written)):
            jitted = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
            analysis = jitted.lower(query, key).compile().memory_analysis()
            temp[name] = None if analysis is None else int(analysis.temp_size_in_bytes)
            steps[name] = lambda f=jitted, q=query, k=key: jax.block_until_ready(f(q, k))
        rows.append(
            {"n": n, "d": dim, "times": interleaved(steps, spec["budget_s"]), "temp_bytes": temp}
        )
    return {"rows": rows}


# --- NumPy --------------------------------------------------------------------------------


def numpy_section(spec: dict[str, Any]) -> dict[str, Any]:
    """``info_nce_value_and_grad`` against the forward ``info_nce`` alone, the bare ``q @ k.T``
    and the two products of the backward."""
    import numpy as np

    from infonce_xp import info_nce, info_nce_value_and_grad

    rng = np.random.default_rng(0)
    rows = []
    for n, dim in spec["sizes"]:
        query, key = rng.standard_normal((2, n, dim), dtype=np.float32)
        weights = rng.random((n, n), dtype=np.float32)  # stands for the (N, N) logit gradient
        steps = {
            "forward": lambda q=query, k=key: info_nce(q, k),
            "value_and_grad": lambda q=query, k=key: info_nce_value_and_grad(q, k),
            "matmul": lambda q=query, k=key: q @ k.T,
            # The two products any gradient needs: (N, N) weights times keys and queries.
            "backward_products": lambda q=query, k=key, g=weights: (g @ k, g.T @ q),
        }
        rows.append({"n": n, "d": dim, "times": interleaved(steps, spec["budget_s"])})
    return {"rows": rows}


JOBS = {
    "torch_time": torch_time,
    "torch_peak": torch_peak,
    "jax": jax_section,
    "numpy": numpy_section,
}


def main() -> None:
    global THREADS
    # Run as a script, this module is __main__: let ``import _worker`` find this same module.
    sys.modules.setdefault("_worker", sys.modules[__name__])
    from _worker_peers import JOBS as PEERS_JOBS
    from _worker_percall import JOBS as PERCALL_JOBS
    from _worker_recipes import JOBS as RECIPES_JOBS
    from _worker_sigmoid import JOBS as SIGMOID_JOBS
    from _worker_targets import JOBS as TARGETS_JOBS

    spec = json.loads(sys.argv[1])
    THREADS = spec.get("threads")
    jobs = {**JOBS, **PERCALL_JOBS, **RECIPES_JOBS, **PEERS_JOBS, **TARGETS_JOBS, **SIGMOID_JOBS}
    result = jobs[spec["job"]](spec)
    print(RESULT + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
