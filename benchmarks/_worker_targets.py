"""The targets section's measurements, in a child process like the others: each option of
"targets beyond one-hot" (label smoothing, a teacher, a margin, sample weights, the debiased and
hard-negative-reweighted losses) against the plain call, in time and in tiled peak memory.

``python benchmarks/_worker_targets.py '<json spec>'`` runs one job as ``_worker.py`` does (its
jobs included), with this module's jobs added; ``targets.child`` starts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _worker import interleaved, peak_of, torch_setup

# option -> the options of ``infonce_xp.torch.InfoNCE``; "teacher" and "sample_weight" also pass
# data to the call (see ``targets_step``)
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "label_smoothing": {"label_smoothing": 0.1},
    "teacher": {"teacher_temperature": 0.5},
    "margin": {"margin": 0.2},
    "sample_weight": {},
    "debiased_prior": {"debiased_prior": 0.1},
    "hardness_beta": {"debiased_prior": 0.1, "hardness_beta": 1.0},
}
BASE = "plain"
# the least a teacher's call can cost: the plain call, and the teacher's N x N similarities
TEACHER_FLOOR = "teacher floor"

Step = Callable[[], None]


def targets_step(option: str, n: int, dim: int, teacher_dim: int, chunk: int | None = None) -> Step:
    """Forward and backward (gradients of query and positive_key) of an in-batch call of
    ``infonce_xp.torch.InfoNCE`` with one option: the teacher's embeddings (``teacher_dim``
    wide) and the weights are inputs, made here, and take no gradient."""
    torch = torch_setup()
    from infonce_xp.torch import InfoNCE

    gen = torch.Generator().manual_seed(0)
    query = torch.randn(n, dim, generator=gen, requires_grad=True)
    key = torch.randn(n, dim, generator=gen, requires_grad=True)
    data: dict[str, Any] = {}
    if option in ("teacher", TEACHER_FLOOR):
        data["teacher"] = tuple(torch.randn(n, teacher_dim, generator=gen) for _ in range(2))
    elif option == "sample_weight":
        data["sample_weight"] = torch.rand(n, generator=gen) + 0.5  # positive, in [0.5, 1.5)
    if option == TEACHER_FLOOR:
        loss = InfoNCE(chunk_size=chunk)
        t_query, t_key = data.pop("teacher")

        def floor() -> None:
            query.grad = key.grad = None
            loss(query, key).backward()
            unit = torch.nn.functional.normalize
            unit(t_query, dim=-1) @ unit(t_key, dim=-1).T

        return floor
    loss = InfoNCE(chunk_size=chunk, **OPTIONS[option])

    def step() -> None:
        query.grad = key.grad = None
        loss(query, key, **data).backward()

    return step


def targets_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Interleaved forward+backward times of every option and the plain call at one size."""
    n, dim = spec["size"]
    options = list(spec["options"])
    if "teacher" in options:
        options.insert(options.index("teacher") + 1, TEACHER_FLOOR)
    steps = {option: targets_step(option, n, dim, spec["teacher_dim"]) for option in options}
    return {"times": interleaved(steps, spec["budget_s"])}


def targets_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS above the inputs of one tiled forward+backward, and its time."""
    option, n, dim, chunk = spec["option"], spec["n"], spec["d"], spec["chunk"]
    teacher_dim = spec["teacher_dim"]
    targets_step(option, 64, 16, teacher_dim, min(chunk, 32))()  # load code paths
    return peak_of(targets_step(option, n, dim, teacher_dim, chunk), 0.0)


JOBS = {"targets_time": targets_time, "targets_peak": targets_peak}
