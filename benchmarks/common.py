"""What every section shares: the sizes of a run, the child process, logging, tables, Section."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "_worker.py"
MiB, GiB = 2**20, 2**30

FULL: dict[str, Any] = {
    "torch_sizes": [(32, 128), (1024, 512), (4096, 512), (8192, 256)],
    "torch_budget_s": 30.0,
    "memory_sizes": [(32, 128), (1024, 512), (4096, 512), (8192, 256), (16384, 256)],
    "jax_sizes": [(32, 128), (1024, 512), (4096, 512), (8192, 256)],
    "jax_budget_s": 20.0,
    "numpy_sizes": [(1024, 256), (4096, 256)],
    "numpy_budget_s": 20.0,
    "tiled_sizes": [4096, 8192, 16384, 32768, 65536, 131072],
    "tiled_dim": 128,
    "tiled_chunk": 1024,
    "tiled_budget_s": 15.0,
    "tiled_ratio_size": (8192, 256),
    "tiled_ratio_budget_s": 60.0,
    "dense_limit_bytes": 16 * GiB,
    # The per-call sweep (plotted) and the cases its goals name, timed alike.
    "percall_dim": 128,
    "percall_ns": [8, 32, 128, 512, 2048, 8192],
    "percall_goal_sizes": [(8, 16), (32, 128), (256, 128), (1024, 512), (4096, 256), (8192, 128)],
    "percall_budget_s": 10.0,
    "percall_small_ns": [8, 32, 256],  # JAX eager and NumPy against hand-written versions
    "percall_small_budget_s": 5.0,
    "kernel_size": (32, 48, 128),  # N queries, M negatives, D
    "recipes_size": (4096, 512),
    "recipes_classes": 64,
    "recipes_budget_s": 60.0,
    "recipes_tiled": (32768, 128, 1024),  # N, D, chunk_size
    "peers_size": (4096, 512),
    # pytorch-metric-learning's NTXentLoss holds a (positive pairs, negative pairs) matrix:
    # about 17 N^3 bytes at its peak, 2 GiB at N = 512 (1 TiB at 4096).
    "peers_size_for": {"pml.NTXentLoss": (512, 512)},
    "peers_budget_s": 30.0,  # per class
    "peers_tiled": (32768, 128, 1024),  # N, D, chunk_size
    "child_timeout_s": 3 * 3600,
    "goals": True,  # the goals name the full run's sizes; the quick run reports none
}
QUICK: dict[str, Any] = {
    **FULL,
    "torch_sizes": [(32, 128), (128, 32)],
    "torch_budget_s": 0.2,
    "memory_sizes": [(128, 32)],
    "jax_sizes": [(32, 128), (128, 32)],
    "jax_budget_s": 0.2,
    "numpy_sizes": [(128, 32)],
    "numpy_budget_s": 0.2,
    "tiled_sizes": [128, 256],
    "tiled_dim": 16,
    "tiled_chunk": 64,
    "tiled_budget_s": 0.0,
    "tiled_ratio_size": (256, 32),
    "tiled_ratio_budget_s": 0.2,
    "dense_limit_bytes": MiB // 2,  # small enough that the quick run shows a skip too
    "percall_dim": 16,
    "percall_ns": [8],  # one size: torch.compile takes seconds per size
    "percall_goal_sizes": [],
    "percall_budget_s": 0.2,
    "percall_small_ns": [8],
    "percall_small_budget_s": 0.2,
    "kernel_size": (8, 12, 16),
    "recipes_size": (128, 32),
    "recipes_budget_s": 0.2,
    "recipes_tiled": (256, 16, 64),
    "peers_size": (128, 32),
    "peers_size_for": {},
    "peers_budget_s": 0.2,
    "peers_tiled": (256, 16, 64),
    "child_timeout_s": 600,
    "goals": False,
}


# --- children -------------------------------------------------------------------------------


def child(spec: dict[str, Any], config: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    """Run one job of ``_worker.py`` in a fresh process; its result, or a string saying why none."""
    spec = {**spec, "threads": config["threads"]}
    cmd = [sys.executable, str(WORKER), json.dumps(spec)]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            timeout=config["child_timeout_s"],
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {config['child_timeout_s']} s"
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    if done.returncode < 0:
        return f"killed by signal {-done.returncode} (out of memory?)"
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return f"failed (exit {done.returncode}): {tail[:200]}"


LOADS: list[float] = []  # the 1-minute load average, sampled at every log line


def log(message: str) -> None:
    with contextlib.suppress(OSError, AttributeError):  # no load average on Windows
        LOADS.append(os.getloadavg()[0])
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- formatting -----------------------------------------------------------------------------


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def timed(stats: dict[str, float]) -> str:
    """Median and interquartile range in ms."""
    return f"{ms(stats['median'])} ({ms(stats['q1'])}-{ms(stats['q3'])})"


def mib(n_bytes: float) -> str:
    return f"{n_bytes / MiB:,.1f}"


def size(n_bytes: float) -> str:
    return f"{n_bytes / GiB:,.0f} GiB" if n_bytes >= GiB else f"{n_bytes / MiB:,.1f} MiB"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return times(a / b)


def times(value: float) -> str:
    """A ratio as shown: two decimals, or two significant digits below 0.1 (not "0.00x")."""
    return f"{value:.2f}x" if abs(value) >= 0.1 else f"{value:.2g}x"


def matrices(n_bytes: float, n: int) -> str:
    """A size in units of one N x N float32 matrix."""
    return f"{n_bytes / (4 * n * n):.2f}"


def case(n: int, dim: int) -> str:
    """How goals and measurements name a size."""
    return f"({n}, {dim})"


# --- sections -------------------------------------------------------------------------------

Drawing = Callable[[Path], "str | None"]  # draws a figure to the path; the reason when it cannot


class Section:
    """A report section: Markdown text and figures, and the ratios it measured (for the goals).

    ``measured[(case, quantity)]`` is the value of a ratio that a goal may bound, with the text
    to show for it; ``goals.check`` compares them with ``goals.GOALS`` in one place.
    """

    def __init__(self, key: str, title: str, intro: str) -> None:
        self.key = key
        self.parts: list[str | tuple[str, str, Drawing]] = [f"## {title}\n\n{intro}"]
        self.measured: dict[tuple[str, str], tuple[float, str]] = {}

    def add(self, text: str) -> None:
        self.parts.append(text)

    def measure(self, case: str, quantity: str, value: float, shown: str | None = None) -> None:
        self.measured[(case, quantity)] = (value, times(value) if shown is None else shown)

    def figure(self, name: str, alt: str, draw: Drawing) -> None:
        """A figure at this place of the text, drawn only when the report is written."""
        self.parts.append((name, alt, draw))

    def text(self, static: Path | None = None) -> str:
        """The Markdown; figures are drawn into ``static`` and linked, or left out without it."""
        texts = []
        for part in self.parts:
            if isinstance(part, str):
                texts.append(part)
            elif static is not None:
                name, alt, draw = part
                reason = draw(static / name)
                texts.append(
                    f"![{alt}](_static/{name})" if reason is None else f"(No plot: {reason}.)"
                )
        return "\n\n".join(texts)


def pyplot() -> Any:
    """matplotlib's pyplot on a file-only backend; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
