"""``benchmarks/run.py --quick`` runs end to end and prints its tables (no timing is checked)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from _subprocess import run_python

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
NEEDED = {"torch": "torch", "jax": "jax", "info_nce": "info-nce-pytorch (the seed)"}


@pytest.mark.slow
def test_quick_benchmark_runs_and_prints_tables(tmp_path: Path) -> None:
    for module, name in NEEDED.items():
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the benchmarks need {name}, which is not installed")
    report = tmp_path / "benchmarks.md"
    # run_python fails the test, with the end of stdout and stderr, if the run exits non-zero
    out = run_python([str(RUN), "--quick", "--report", str(report)], timeout=600).stdout
    assert out.startswith("# Benchmarks")
    for title in ("PyTorch: forward + backward time", "peak memory", "JAX", "NumPy", "Tiled"):
        assert title in out
    assert "| N | D | infonce_xp | seed | floor |" in out
    assert "Not measured" not in out and "failed" not in out, out
    assert report.read_text(encoding="utf-8") == out.rstrip("\n") + "\n"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "_static" / "bench_memory.png").stat().st_size > 0
