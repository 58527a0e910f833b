"""The recipes section's measurements, run by ``_worker.py`` in a child process like the others:
labelled losses against the label-free one, in time and in tiled peak memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _worker import interleaved, peak_of, torch_setup

# impl -> the options of the call; the "label-free" ones take no labels
IMPLS: dict[str, dict[str, Any]] = {
    "label-free": {},
    "own": {"positives": "own"},
    "supcon": {"positives": "supcon"},
    "pairs": {"positives": "pairs"},
    "label-free, same view": {"same_view_negatives": True},
    "supcon, same view": {"positives": "supcon", "same_view_negatives": True},
}
# each labelled call against the label-free call with the same candidates
BASE = {impl: "label-free, same view" if "same view" in impl else "label-free" for impl in IMPLS}


def recipes_step(
    impl: str, n: int, dim: int, classes: int, chunk: int | None = None
) -> Callable[[], None]:
    """Forward and backward of an in-batch call with labels of ``classes`` classes."""
    torch = torch_setup()
    from infonce_xp import info_nce

    gen = torch.Generator().manual_seed(0)
    query = torch.randn(n, dim, generator=gen, requires_grad=True)
    key = torch.randn(n, dim, generator=gen, requires_grad=True)
    options = dict(IMPLS[impl])
    if not impl.startswith("label-free"):
        options["labels"] = torch.randint(0, classes, (n,), generator=gen)

    def step() -> None:
        query.grad = key.grad = None
        info_nce(query, key, chunk_size=chunk, **options).backward()

    return step


def recipes_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Interleaved forward+backward times of every impl at one size."""
    n, dim = spec["size"]
    steps = {impl: recipes_step(impl, n, dim, spec["classes"]) for impl in spec["impls"]}
    return {"times": interleaved(steps, spec["budget_s"])}


def recipes_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS above the inputs of one tiled forward+backward, and its time."""
    impl, n, dim, chunk = spec["impl"], spec["n"], spec["d"], spec["chunk"]
    recipes_step(impl, 64, 16, spec["classes"], min(chunk, 32))()  # load code paths
    return peak_of(recipes_step(impl, n, dim, spec["classes"], chunk), 0.0)


JOBS = {"recipes_time": recipes_time, "recipes_peak": recipes_peak}
