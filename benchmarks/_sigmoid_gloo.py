"""The sigmoid section's gloo measurement: ``exchange="ring"`` against ``exchange="gather"`` on
W processes of this machine, forward+backward time per step and peak resident memory per process.

``launch(spec)`` (the job ``sigmoid_gloo`` of ``_worker_sigmoid.py``, run in ``_worker.py``'s
child like every job) starts the W ranks, each ``python _sigmoid_gloo.py JSON`` in a fresh
process, on a free port of 127.0.0.1; it waits for them within ``spec["timeout_s"]``, kills
them all as soon as one fails or the time is up, and merges their results. A rank: one torch
thread, a gloo process group over TCP, a warm-up on a small call, then the peak resident memory
(VmHWM, reset through ``/proc/self/clear_refs``) of one full-size forward+backward above what was
resident before it, then ``reps`` more steps timed, each after a barrier; at the end one barrier
and ``destroy_process_group``. A rank dies with the launcher (on Linux). Every rank's queries
and keys are its own (seeded by rank).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from _worker import RESULT, PeakRSS, current_rss, summary

TEMPERATURE, BIAS = 0.1, -10.0
WARMUP = (64, 16)  # rows and width of the warm-up call (its chunk: at most 32)
TAIL = 400  # characters of a failed rank's stderr kept in the error


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(spec: dict[str, Any], attempts: int = 2) -> dict[str, Any]:
    """Run the ranks; their merged result. A port taken between choosing and binding it (by
    another program) is retried once on a new port."""
    for attempt in range(attempts):
        try:
            return _launch(spec)
        except RuntimeError as error:
            if "address already in use" not in str(error).lower() or attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


def _launch(spec: dict[str, Any]) -> dict[str, Any]:
    world, timeout = spec["world"], spec["timeout_s"]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sigmoid_gloo_") as tmp:
        procs, outs = [], []
        for rank in range(world):
            job = {**spec, "rank": rank, "port": port, "launcher": os.getpid()}
            out, err = Path(tmp, f"rank{rank}.out"), Path(tmp, f"rank{rank}.err")
            with out.open("w") as stdout, err.open("w") as stderr:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, json.dumps(job)],
                        stdout=stdout,
                        stderr=stderr,
                        stdin=subprocess.DEVNULL,
                    )
                )
            outs.append((out, err))
        deadline = time.monotonic() + timeout
        failed = None
        try:
            while any(p.poll() is None for p in procs):
                failed = next((r for r, p in enumerate(procs) if p.returncode), None)
                if failed is not None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gloo ranks timed out after {timeout} s")
                time.sleep(0.05)
            failed = next((r for r, p in enumerate(procs) if p.returncode), None)
        finally:
            for proc in procs:  # only the ranks this launch started, each by its own handle
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if failed is not None:
            code = procs[failed].returncode
            tail = outs[failed][1].read_text(errors="replace").strip().splitlines()
            shown = " / ".join(tail[-3:])[-TAIL:] or "no output"
            raise RuntimeError(f"gloo rank {failed} failed (exit {code}): {shown}")
        results = []
        for rank, (out, _) in enumerate(outs):
            lines = [x for x in out.read_text().splitlines() if x.startswith(RESULT)]
            if not lines:
                raise RuntimeError(f"gloo rank {rank} printed no result")
            results.append(json.loads(lines[-1][len(RESULT) :]))
    return merge(results)


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The ranks' results as one: a step lasts as long as its slowest rank; memory, the largest
    per process."""
    steps = [max(times) for times in zip(*(r["times"] for r in results))]
    return {
        "time": summary(steps),
        "peak_bytes": max(r["peak_bytes"] for r in results),
        "hwm_bytes": max(r["hwm_bytes"] for r in results),
        "baseline_bytes": max(r["baseline_bytes"] for r in results),
        "method": results[0]["method"],
        "ranks": results,
    }


def rank_main(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from infonce_xp import sigmoid_loss
    from infonce_xp.torch import all_gather

    rank, world, exchange = spec["rank"], spec["world"], spec["exchange"]
    n, dim, chunk = spec["n"], spec["d"], spec["chunk"]
    torch.set_num_threads(1)

    def step_of(rows: int, width: int, tile: int) -> Any:
        gen = torch.Generator().manual_seed(1000 * rank + rows)
        query, key = (torch.randn(rows, width, generator=gen).requires_grad_() for _ in "qk")

        def step() -> None:
            query.grad = key.grad = None
            sigmoid_loss(
                query,
                key,
                TEMPERATURE,
                BIAS,
                chunk_size=tile,
                gather=all_gather,
                exchange=exchange,
            ).backward()

        return step

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{spec['port']}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=spec["timeout_s"]),
    )
    try:
        step_of(*WARMUP, min(chunk, 32))()  # code paths, gloo's buffers for small messages
        step = step_of(n, dim, chunk)
        gc.collect()
        meter = PeakRSS()
        dist.barrier()
        baseline = current_rss()
        meter.reset()
        step()  # the peak of the first full-size step; it is also the timing's warm-up
        hwm = meter.peak()
        times = []
        for _ in range(spec["reps"]):
            dist.barrier()
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return {
        "rank": rank,
        "times": times,
        "peak_bytes": max(hwm - baseline, 0),
        "hwm_bytes": hwm,
        "baseline_bytes": baseline,
        "method": meter.method,
    }


def die_with(launcher: int) -> None:
    """On Linux, be killed when the launcher dies (killed on its own time limit, say), so that
    no rank outlives it waiting on a collective."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != launcher:  # it died before that
        sys.exit("the launcher is gone")


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    die_with(job["launcher"])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(RESULT + json.dumps(rank_main(job)), flush=True)
