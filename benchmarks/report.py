"""The Markdown report: the machine, how to rerun, the goals, then each section and its figures."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import goals
from common import LOADS, GiB, Section

GOAL_NOTES = """\
Where a goal is missed, the tables below show how much room it left. *least reachable* is the
measured ratio's floor (no implementation can go below it on this machine), and *goal / floor*
and *measured / floor* restate the goal and the measurement against it:

- **torch at small sizes** is per-call overhead. The seed is about 50 tensor operations run by
  autograd in C++; infonce_xp adds its input checks, the array-API layer (array-api-compat's
  wrappers), the engine and a backward in Python, for the same arithmetic. That overhead does
  not grow with the data, so the ratio falls as N grows. The per-call section measures it
  against N, counts the kernels of each mode, and times infonce_xp's own operations written out
  by hand with nothing around them (*same math by hand*): the seed's time or a few percent
  less, which leaves a few microseconds for everything else a call does.
- **torch at (1024, 512)**: *goal / floor* shows what the goal leaves over the three matrix
  products for normalising, the exponentials over the N x N logits and the autograd
  bookkeeping, which torch runs as separate kernels. Where the seed is itself close to the
  floor, that margin is about the cost of these passes, and the ratio lands near the goal.
- **NumPy**: *least possible* is the forward plus the two products that any gradient needs.
  Where it is above 1.5, no implementation can meet the 1.5x goal on that machine; against
  that floor, the goal is value_and_grad / (info_nce + products) ≤ *goal / floor*."""

RERUN = """\
## How to rerun

```console
$ nox -s bench                         # everything; writes this page and its plots
$ nox -s bench -- --quick              # small sizes, minutes
$ nox -s bench -- --only tiled,memory  # some sections (printed only)
$ python benchmarks/run.py --help      # in an environment with the `bench` group
```

The `bench` session installs torch, jax, numpy, info-nce-pytorch, matplotlib and psutil. See
`benchmarks/README.md`."""


def version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def distribution_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_ram() -> str:
    try:
        import psutil

        return f"{psutil.virtual_memory().total / GiB:.1f} GiB"
    except ImportError:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GiB:.1f} GiB"


def load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except (OSError, AttributeError):
        return "unknown"


def machine(start_load: str, threads: int) -> str:
    try:
        import torch

        torch_info = f"{torch.__version__} ({threads} intra-op threads)"
    except ImportError:
        torch_info = "not installed"
    rows = [
        ["CPU", f"{cpu_model()}, {os.cpu_count()} logical cores"],
        ["RAM", total_ram()],
        ["OS", platform.platform()],
        ["Python", platform.python_version()],
        ["torch", torch_info],
        ["jax", version("jax")],
        ["numpy", version("numpy")],
        ["info-nce-pytorch (the seed)", distribution_version("info-nce-pytorch")],
        ["infonce_xp", version("infonce_xp")],
        ["load average (1/5/15 min) at start", start_load],
        ["load average at end", load()],
        [
            "highest 1-min load average seen between cases",
            f"{max(LOADS):.2f} (this benchmark itself adds up to {threads})" if LOADS else "-",
        ],
    ]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def page(
    sections: list[Section],
    *,
    start_load: str,
    threads: int,
    minutes: float,
    quick: bool,
    with_goals: bool,
    path: Path | None,
) -> str:
    """The whole report; with a ``path``, each section's figures are drawn to _static/ beside it."""
    body = [
        "# Benchmarks",
        "Speed and memory of `infonce_xp` against the seed, `info_nce` from "
        "[info-nce-pytorch](https://pypi.org/project/info-nce-pytorch/) 0.1.4, and against the "
        "bare matrix product that any InfoNCE must compute. The ratios carry over to other "
        "machines better than the absolute times, which belong to the machine below. A "
        "ratio below 1 means infonce_xp is faster or smaller.",
        "## Machine\n\n"
        + machine(start_load, threads)
        + f"\n\nMeasured {datetime.date.today().isoformat()}"
        + (" with `--quick` (small sizes)" if quick else "")
        + f"; the run took {minutes:.1f} minutes. Timings are affected by whatever else "
        "the machine runs (see the load average).",
        RERUN,
    ]
    summary = goals.summary(sections) if with_goals else ""
    if summary:
        body.append("## Summary against the project's goals\n\n" + summary + "\n\n" + GOAL_NOTES)
    static = None if path is None else path.parent / "_static"
    body += [section.text(static) for section in sections]
    return "\n\n".join(body) + "\n"
