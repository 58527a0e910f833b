"""Speed and memory of infonce_xp against the seed (info-nce-pytorch) and the bare matmul, as ratios.

Run ``python benchmarks/run.py`` (what ``nox -s bench`` does) for the full set, about 50 minutes
on two cores (20 of them the peers section); ``--quick`` for small sizes in seconds; ``--only SECTION`` for part of it. The
report is printed as Markdown and, for a full run, written to docs/benchmarks.md with its plots
in docs/_static/. Nothing here asserts: numbers are reported, and goals.py says which goals
they meet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax_jit
import memory
import numpy_grad
import peers
import percall
import recipes
import report
import sigmoid
import targets
import tiled
import torch_time
from common import FULL, QUICK, ROOT, Section, log

RUNNERS: dict[str, Callable[[dict[str, Any]], Section]] = {
    "torch": torch_time.run,
    "memory": memory.run,
    "jax": jax_jit.run,
    "numpy": numpy_grad.run,
    "tiled": tiled.run,
    "percall": percall.run,
    "recipes": recipes.run,
    "peers": peers.run,
    "targets": targets.run,
    "sigmoid": sigmoid.run,
}
SECTIONS = tuple(RUNNERS)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, for tests")
    parser.add_argument(
        "--only",
        action="append",
        metavar="SECTION",
        help=f"run only these sections (repeat or comma-separate): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--report",
        metavar="PATH",
        help="write the Markdown report here, and the plots to _static/ beside it "
        "(default: docs/benchmarks.md for a full run of every section, else nowhere)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch's intra-op threads (default: every core, %(default)s here)",
    )
    args = parser.parse_args(argv)
    chosen = [s for item in args.only or [] for s in item.split(",") if s]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in chosen] if chosen else list(SECTIONS)
    if args.report is None and not args.quick and not chosen:
        args.report = str(ROOT / "docs" / "benchmarks.md")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    config = {**(QUICK if args.quick else FULL), "threads": args.threads}
    start_load, started = report.load(), time.perf_counter()
    sections = []
    for name in args.sections:
        log(f"section {name}")
        sections.append(RUNNERS[name](config))
    path = Path(args.report) if args.report else None
    text = report.page(
        sections,
        start_load=start_load,
        threads=config["threads"],
        minutes=(time.perf_counter() - started) / 60,
        quick=args.quick,
        with_goals=config["goals"],
        path=path,
    )
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        log(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
