"""Gradient caching against plain training: peak memory and time of one step (torch, CPU).

    python benchmarks/grad_cache.py                 # everything, as Markdown tables
    python benchmarks/grad_cache.py --quick         # small sizes, a smoke test

One training step (zero_grad, loss, backward, SGD step) of an MLP encoder 784 -> 2048 -> 2048
-> 128 (float32) shared by two views of each sample:

- plain: ``InfoNCE()(*encode(views)).backward()`` on the whole batch (untiled loss);
- grad_cache: ``grad_cache(encode, views, InfoNCE(chunk_size=1024), micro_batch=512)``.

Memory: each (method, batch) runs in a fresh process, which writes 5 to /proc/self/clear_refs
just before the step (resetting VmHWM to the current resident size) and reads VmHWM after it.
We report the step's peak (VmHWM) and what the step added to what was resident before it
(the model, the data, torch itself), with the default allocator (no MALLOC_* variable reaches
the children). Time: one process alternates the two methods (interleaved, after one warm-up
step each) and reports the median of each. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES = (784, 2048, 2048, 128)
MICRO_BATCH, CHUNK = 512, 1024
MIB = 2**20


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def setup(batch: int, threads: int) -> tuple[Any, Any, Any]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers: list[Any] = []
    for fan_in, fan_out in itertools.pairwise(SIZES):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    encoder = torch.nn.Sequential(*layers[:-1])
    views = torch.rand(2, batch, SIZES[0], generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD(encoder.parameters(), lr=1e-3)
    return encoder, (views[0], views[1]), optimizer


def step(method: str, encoder: Any, views: Any, optimizer: Any) -> float:
    from infonce_xp.torch import InfoNCE, grad_cache

    def encode(v: Any) -> tuple[Any, Any]:
        return encoder(v[0]), encoder(v[1])

    optimizer.zero_grad(set_to_none=True)
    if method == "plain":
        loss = InfoNCE()(*encode(views))
        loss.backward()
    else:
        chunk = None if method == "grad_cache_untiled" else CHUNK
        loss = grad_cache(encode, views, InfoNCE(chunk_size=chunk), micro_batch=MICRO_BATCH)
    optimizer.step()
    return float(loss.detach())


def child_memory(method: str, batch: int, threads: int) -> dict[str, float]:
    encoder, views, optimizer = setup(batch, threads)
    # One small step first: lazy imports, kernel set-up and the parameters' .grad are not the
    # step's working memory (the .grad are freed again by zero_grad and counted in the step).
    step(method, encoder, tuple(v[:1024] for v in views), optimizer)
    Path("/proc/self/clear_refs").write_text("5")
    before = status_kib("VmRSS")
    step(method, encoder, views, optimizer)
    peak = status_kib("VmHWM")
    return {
        "peak_mib": peak / 1024,
        "before_mib": before / 1024,
        "step_mib": (peak - before) / 1024,
    }


def child_time(batch: int, rounds: int, threads: int) -> dict[str, list[float]]:
    encoder, views, optimizer = setup(batch, threads)
    times: dict[str, list[float]] = {"plain": [], "grad_cache": [], "grad_cache_untiled": []}
    for method in times:  # warm-up
        step(method, encoder, views, optimizer)
    for _ in range(rounds):
        for method in times:
            start = time.perf_counter()
            step(method, encoder, views, optimizer)
            times[method].append(time.perf_counter() - start)
    return times


def fresh(*args: str) -> Any:
    """Run this file with ``--child ARGS`` in a new process; its JSON result."""
    # The allocator as users have it: no MALLOC_* tuning reaches the child, so the peak is
    # what a training script sees (freed memory that the allocator keeps resident included).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per method")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = str(args.threads)
    if args.child:
        kind, *rest = args.child
        if kind == "memory":
            result: Any = child_memory(rest[0], int(rest[1]), args.threads)
        else:
            result = child_time(int(rest[0]), args.rounds, args.threads)
        print(json.dumps(result))
        return

    import torch

    big = 2048 if args.quick else 16384
    curve = [1024, 2048] if args.quick else [1024, 2048, 4096, 8192, 16384]
    timed = 1024 if args.quick else 4096
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); MLP {' -> '.join(map(str, SIZES))} "
        f"float32 shared by two views; grad_cache: micro_batch={MICRO_BATCH}, "
        f"InfoNCE(chunk_size={CHUNK}); plain: InfoNCE() on the whole batch\n"
    )

    print(
        "| batch | plain: peak (step) MiB | grad_cache: peak (step) MiB | peak ratio | step ratio |"
    )
    print("|---|---|---|---|---|")
    for batch in curve:
        plain = fresh("memory", "plain", str(batch), "--threads", threads)
        cached = fresh("memory", "grad_cache", str(batch), "--threads", threads)
        print(
            f"| {batch} | {plain['peak_mib']:.0f} ({plain['step_mib']:.0f}) "
            f"| {cached['peak_mib']:.0f} ({cached['step_mib']:.0f}) "
            f"| {cached['peak_mib'] / plain['peak_mib']:.3f} "
            f"| {cached['step_mib'] / plain['step_mib']:.3f} |",
            flush=True,
        )
    if big not in curve:
        print(f"(batch {big} not in the curve)")

    times = fresh("time", str(timed), "--threads", threads, "--rounds", str(args.rounds))
    plain, cached, untiled = (statistics.median(t) for t in times.values())
    print(f"\nTime of one step at batch {timed} (median of {args.rounds}, interleaved):\n")
    print("| plain s | grad_cache s | ratio | grad_cache, untiled loss s | ratio |")
    print("|---|---|---|---|---|")
    print(
        f"| {plain:.3f} | {cached:.3f} | {cached / plain:.2f} "
        f"| {untiled:.3f} | {untiled / plain:.2f} |"
    )


if __name__ == "__main__":
    main()
