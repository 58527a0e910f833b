"""The demo, ``python -m infonce_xp``: the seed's README examples on every installed backend.

Prints one row per (backend, device, example) with the loss and the time of one call, checks that
all backends agree (and agree with ``info-nce-pytorch`` when it is installed) and exits 1 if not.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from . import info_nce

BATCH, NEGATIVES, DIM = 32, 48, 128
RTOL = 1e-5  # float32 round-off


def examples() -> dict[str, tuple[Any, ...]]:
    """The three examples of the seed's README, as float32 NumPy arrays (fixed seed)."""
    import numpy as np

    rng = np.random.default_rng(0)

    def draw(*shape: int) -> Any:
        return rng.standard_normal(shape, dtype=np.float32)

    query, positive_key = draw(BATCH, DIM), draw(BATCH, DIM)
    return {
        "in-batch": (query, positive_key, None, "unpaired"),
        "unpaired": (query, positive_key, draw(NEGATIVES, DIM), "unpaired"),
        "paired": (query, positive_key, draw(BATCH, NEGATIVES, DIM), "paired"),
    }


Convert = Callable[[Any], Any]


def backends() -> Iterator[tuple[str, str, Convert, Callable[[Any], float]]]:
    """(name, device, to_backend, to_float) for every installed backend and device."""
    import numpy as np

    yield "numpy", "cpu", lambda a: a, float
    if importlib.util.find_spec("array_api_strict"):
        import array_api_strict as strict

        yield "array_api_strict", "cpu", strict.asarray, lambda x: float(np.asarray(x._array))
    if importlib.util.find_spec("torch"):
        import torch

        for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            to_torch: Convert = partial(torch.asarray, device=dev)
            yield "torch", dev, to_torch, lambda x: float(x.item())
    if importlib.util.find_spec("jax"):
        import jax

        for dev in jax.devices():
            to_jax: Convert = partial(jax.device_put, device=dev)
            yield "jax", dev.platform, to_jax, float
    if importlib.util.find_spec("cupy"):
        import cupy

        try:
            available = cupy.cuda.is_available()
        except Exception:  # CuPy imports without a CUDA driver but cannot allocate
            available = False
        if available:
            yield "cupy", "cuda", cupy.asarray, lambda x: float(x.get())


def seed_losses(data: dict[str, tuple[Any, ...]]) -> dict[str, float] | None:
    if not (importlib.util.find_spec("info_nce") and importlib.util.find_spec("torch")):
        return None
    import torch
    from info_nce import info_nce as seed

    out = {}
    for name, (q, k, neg, mode) in data.items():
        tensors = [None if a is None else torch.asarray(a) for a in (q, k, neg)]
        out[name] = float(seed(*tensors, negative_mode=mode))
    return out


def main() -> int:
    if not importlib.util.find_spec("numpy"):
        print(
            "The demo draws its data with NumPy: pip install 'infonce-xp[numpy]'", file=sys.stderr
        )
        return 1
    data = examples()
    reference = seed_losses(data)
    rows = []
    losses: dict[str, list[float]] = {name: [] for name in data}
    for backend, dev, convert, to_float in backends():
        for name, (q, k, neg, mode) in data.items():
            query, positive_key = convert(q), convert(k)
            negative_keys = None if neg is None else convert(neg)
            info_nce(query, positive_key, negative_keys, negative_mode=mode)  # warm-up: jit, caches
            start = time.perf_counter()
            value = to_float(info_nce(query, positive_key, negative_keys, negative_mode=mode))
            elapsed = time.perf_counter() - start
            losses[name].append(value)
            rows.append((backend, dev, name, value, elapsed))
    header = f"{'backend':<18}{'device':<8}{'example':<10}{'loss':>12}{'time':>12}"
    print(header)
    print("-" * len(header))
    for backend, dev, name, value, elapsed in rows:
        print(f"{backend:<18}{dev:<8}{name:<10}{value:>12.6f}{elapsed * 1e6:>10.0f}µs")
    agree = True
    for name, values in losses.items():
        target = reference[name] if reference else values[0]
        spread = max(abs(v - target) / abs(target) for v in values)
        agree &= spread <= RTOL
        against = "info-nce-pytorch" if reference else "the first backend"
        print(f"{name}: {len(values)} backends, max relative difference to {against}: {spread:.1e}")
    if reference is None:
        print("(info-nce-pytorch is not installed: compared backends with each other)")
    print("all backends agree" if agree else "BACKENDS DISAGREE")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
