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
    if impl == "same math by hand":
        return torch_by_hand
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


_BY_HAND: list[Any] = []


def torch_by_hand(query: Any, key: Any, temperature: float = 0.1) -> Any:
    """infonce_xp's in-batch math, its operations written out in one ``torch.autograd.Function``
    with nothing around them: no checks, dispatch, array-API layer or engine. What that math
    costs on its own, and so the least an implementation of it can cost per call.

    The same operations in the same order as ``_core`` and ``_stacks``: each row divided by its
    largest magnitude before its norm (overflow-safe), both inputs normalised as one stack
    while they hold at most ``STACK_LIMIT`` numbers, the positive read off the logits'
    diagonal and hidden, ``log1p``/``expm1`` rows, the analytic backward's two products.
    """
    if not _BY_HAND:
        _BY_HAND.append(_by_hand_function())
    return _BY_HAND[0].apply(query, key, 1.0 / temperature)


def _by_hand_function() -> Any:
    import torch

    from infonce_xp._stacks import STACK_LIMIT

    def normalise(x: Any) -> tuple[Any, Any, Any]:
        largest = x.abs().amax(-1, keepdim=True)
        largest.masked_fill_(largest == 0, 1.0)
        scaled = x / largest
        length = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True).clamp_(min=1.0)
        return scaled / length, length, largest

    def normalise_backward(unit: Any, length: Any, largest: Any, grad: Any) -> Any:
        grad -= unit * torch.linalg.vecdot(unit, grad)[:, None]
        return grad.div_(length * largest)

    class ByHand(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, query: Any, key: Any, scale: float) -> Any:
            n = query.shape[0]
            if 2 * query.numel() <= STACK_LIMIT:
                unit, length, largest = normalise(torch.cat([key, query]))
                units_k, units_q = unit.split_with_sizes([n, n])
                stacked = (unit, length, largest)
            else:
                (units_k, *k_lengths), (units_q, *q_lengths) = normalise(key), normalise(query)
                stacked = None
            logits = (units_q * scale) @ units_k.T
            positive = logits.diagonal().clone()
            top = logits.amax(-1)
            logits.diagonal().fill_(-torch.inf)
            exps = logits.sub_(top[:, None]).exp_()
            others = exps.sum(-1)
            gap = positive - top
            shifted = others + torch.expm1(gap)
            rows = torch.log1p(shifted) - gap
            exps.diagonal().sub_(others)
            if stacked is None:
                ctx.save_for_backward(units_q, units_k, *q_lengths, *k_lengths, exps, shifted + 1)
            else:
                ctx.save_for_backward(units_q, units_k, *stacked, exps, shifted + 1)
            ctx.scale, ctx.stacked = scale, stacked is not None
            return rows.mean()

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            units_q, units_k, *lengths, exps, partition = ctx.saved_tensors
            n = exps.shape[0]
            column = (grad / n / partition * ctx.scale)[:, None]
            grad_q = (exps @ units_k).mul_(column)
            grad_k = exps.T @ (units_q * column)
            if ctx.stacked:
                unit, length, largest = lengths
                grad_k, grad_q = normalise_backward(
                    unit, length, largest, torch.cat([grad_k, grad_q])
                ).split_with_sizes([n, n])
            else:
                q_length, q_largest, k_length, k_largest = lengths
                grad_q = normalise_backward(units_q, q_length, q_largest, grad_q)
                grad_k = normalise_backward(units_k, k_length, k_largest, grad_k)
            return grad_q, grad_k, None

    return ByHand


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
