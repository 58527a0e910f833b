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
    for title in (
        "PyTorch: forward + backward time",
        "peak memory",
        "JAX",
        "NumPy",
        "Tiled",
        "Peers",
        "Targets beyond one-hot",
        "Sigmoid loss (SigLIP) against open_clip",
    ):
        assert title in out
    for title in ("Per-call cost", "Kernels per forward + backward", "JAX eager", "value and grad"):
        assert title.lower() in out.lower()
    assert "| N | D | infonce_xp | seed | floor |" in out
    assert "Not measured" not in out and "failed" not in out, out
    assert report.read_text(encoding="utf-8") == out.rstrip("\n") + "\n"
    if importlib.util.find_spec("matplotlib") is not None:
        for plot in ("bench_memory.png", "bench_percall.png"):
            assert (tmp_path / "_static" / plot).stat().st_size > 0


def test_goals_are_checked_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from common import Section
    from goals import Goal, check

    section = Section("torch", "title", "intro")
    section.measure("(32, 128)", "time xp / seed", 1.1)
    section.measure("(32, 128)", "floor / seed", 0.4)
    goals = [
        Goal("torch", "(32, 128)", "time xp / seed", 1.2, least="floor / seed"),
        Goal("torch", "(32, 128)", "time xp / seed", 1.0),
        Goal("torch", "(64, 128)", "time xp / seed", 1.0),
        Goal("numpy", "N=1024", "value_and_grad / info_nce", 1.5),  # its section did not run
    ]
    rows = check([section], goals)
    assert rows == [
        ["torch (32, 128): time xp / seed ≤ 1.2x", "1.10x", "0.40x", "3.00x", "2.75x", "met"],
        ["torch (32, 128): time xp / seed ≤ 1x", "1.10x", "-", "-", "-", "**not met**"],
        ["torch (64, 128): time xp / seed ≤ 1x", "not measured", "-", "-", "-", "-"],
    ]


@pytest.mark.backends("torch")
@pytest.mark.parametrize("n, dim", [(8, 16), (256, 128)])  # stacked, and normalised apart
def test_the_per_call_sections_math_by_hand_is_infonce_xps(
    monkeypatch: pytest.MonkeyPatch, n: int, dim: int
) -> None:
    """The hand-written version that the per-call section times computes our loss and
    gradients (so its time is the cost of our math with nothing around it)."""
    import torch

    from infonce_xp import info_nce

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _worker_percall import torch_by_hand

    gen = torch.Generator().manual_seed(0)
    data = torch.randn(2, n, dim, generator=gen, dtype=torch.float64)
    data[0, 1] = 0.0  # a zero row
    data[1, 2] *= 1e300  # a row whose sum of squares overflows
    results = []
    for loss in (torch_by_hand, info_nce):
        query, key = (x.clone().requires_grad_() for x in data)
        value = loss(query, key, temperature=0.05)
        value.backward()
        results.append((value, query.grad, key.grad))
    for ours, by_hand in zip(results[1], results[0]):
        torch.testing.assert_close(by_hand, ours, rtol=1e-10, atol=1e-12)
