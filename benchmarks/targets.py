"""Section ``targets``: what each option of "targets beyond one-hot" (label smoothing, a
teacher, a margin, sample weights, the debiased and hard-negative-reweighted losses) costs: its
time against the plain call (dense), and its tiled peak memory against the seed's dense peak."""

from __future__ import annotations

from typing import Any

import common
from _worker_targets import BASE, OPTIONS, TEACHER_FLOOR
from common import Section, case, log, mib, size, table, timed

# This section's sizes, by run: the full run's are those its goals name (``config["goals"]``
# says which run this is). A key of the same name in ``config`` wins.
FULL: dict[str, Any] = {
    "targets_size": (4096, 512),
    "targets_teacher_dim": 256,  # the teacher's embeddings are this wide (D')
    "targets_budget_s": 150.0,  # ~10 interleaved rounds of the seven calls on 2 cores
    "targets_tiled": (32768, 128, 1024),  # N, D, chunk_size
}
QUICK: dict[str, Any] = {
    "targets_size": (128, 32),
    "targets_teacher_dim": 16,
    "targets_budget_s": 0.2,
    "targets_tiled": (256, 16, 64),
}
SEED_MATRICES = 3.0  # the seed's dense peak in N x N float32 matrices (measured: 3.06 at 8192)

# option -> how the report shows the call (the options' values are those of OPTIONS)
SHOWN = {
    "plain": "`InfoNCE()`",
    "label_smoothing": "`label_smoothing=0.1`",
    "teacher": "`teacher=(t_query, t_positive_key)`, D' = {teacher_dim}, `teacher_temperature=0.5`",
    TEACHER_FLOOR: "`InfoNCE()`, then the teacher's similarities (normalised, N x N x D')",
    "margin": "`margin=0.2`",
    "sample_weight": "`sample_weight=` (N,), uniform in [0.5, 1.5)",
    "debiased_prior": "`debiased_prior=0.1`",
    "hardness_beta": "`hardness_beta=1.0, debiased_prior=0.1`",
}


def settings(config: dict[str, Any]) -> dict[str, Any]:
    return {**(FULL if config["goals"] else QUICK), **config}


def shown(option: str, config: dict[str, Any]) -> str:
    return SHOWN[option].format(teacher_dim=config["targets_teacher_dim"])


def run(config: dict[str, Any]) -> Section:
    config = settings(config)
    n, dim = config["targets_size"]
    section = Section(
        "targets",
        "Targets beyond one-hot: the cost of each option",
        f"PyTorch CPU float32 forward+backward (the gradients of query and positive key) of "
        f"an in-batch call of `infonce_xp.torch.InfoNCE` at N = {n}, D = {dim}, with one "
        "option of the targets issue (23) at a time, against the same call without it, "
        "interleaved in one child process (times: medians in ms, interquartile range in "
        "brackets). The teacher's embeddings and the weights are inputs made beforehand; "
        "they take no gradient. *teacher floor* is the plain call followed by the teacher's "
        "own similarity matrix, which any loss against a teacher computes: the least that "
        "the teacher's call can cost.",
    )
    log(f"targets: interleaved at N={n} D={dim}")
    spec = {
        "job": "targets_time",
        "size": (n, dim),
        "teacher_dim": config["targets_teacher_dim"],
        "options": list(OPTIONS),
        "budget_s": config["targets_budget_s"],
    }
    result = common.child(spec, config)
    if isinstance(result, str):
        section.add(f"Not measured: {result}")
    else:
        times, rows = result["times"], []
        base = times[BASE]["median"]
        for option, t in times.items():
            value = t["median"] / base
            cells = [f"`{option}`", shown(option, config), timed(t), f"{value:.2f}x", t["reps"]]
            rows.append(cells)
            if option == TEACHER_FLOOR:  # the teacher goal's least reachable value
                section.measure(case(n, dim), "teacher floor / plain", value)
            elif option != BASE:
                section.measure(case(n, dim), f"time {option} / plain", value)
        section.add(table(["option", "call", "time (ms)", "/ plain", "reps"], rows))
    tiled_part(section, config)
    return section


def seed_size(n: int, limit: float) -> int:
    """The largest N / 2^k at which the seed's dense call is estimated to fit under ``limit``."""
    at = n
    while at > 1 and SEED_MATRICES * 4 * at * at > limit:
        at //= 2
    return at


def tiled_part(section: Section, config: dict[str, Any]) -> None:
    """Each option's tiled peak at N against the seed's dense peak there: measured at N where
    it fits under the dense limit, else at the largest N / 2^k that fits and scaled by 4^k."""
    n, dim, chunk = config["targets_tiled"]
    limit = config["dense_limit_bytes"]
    at = seed_size(n, limit)
    log(f"targets: dense seed N={at}")
    seed = common.child({"job": "torch_peak", "impl": "seed", "n": at, "d": dim}, config)
    rows, seed_at_n = [], None
    if isinstance(seed, str):
        rows.append(["seed, dense", at, seed, "-", "-"])
    else:
        seed_at_n = seed["peak_bytes"] * (n / at) ** 2
        rows.append(["seed, dense", at, mib(seed["peak_bytes"]), timed(seed["time"]), "-"])
        if at < n:
            matrices = seed["peak_bytes"] / (4 * at * at)
            call = f"seed, dense, scaled: {matrices:.2f} N x N matrices as at N = {at}"
            rows.append([call, n, f"≈ {mib(seed_at_n)}", "not run", "-"])
    scaled = f" (seed scaled from N = {at})" if at < n else ""
    for option in OPTIONS:
        log(f"targets: tiled {option} N={n}")
        spec = {"job": "targets_peak", "option": option, "n": n, "d": dim, "chunk": chunk}
        result = common.child({**spec, "teacher_dim": config["targets_teacher_dim"]}, config)
        call = shown(option, config)
        if isinstance(result, str):
            rows.append([call, n, result, "-", "-"])
            continue
        peak = result["peak_bytes"]
        value = None if not seed_at_n else peak / seed_at_n
        rows.append(
            [call, n, mib(peak), timed(result["time"]), "-" if value is None else f"{value:.2%}"]
        )
        if value is not None and option != BASE:
            quantity = f"tiled {option} peak / seed"
            section.measure(case(n, dim), quantity, value, f"{value:.2%}{scaled}")
    section.add(
        f"Tiled, N = {n}, D = {dim}, `chunk_size={chunk}`, each call in a fresh process: peak "
        "resident memory above the inputs (as in the memory section; time: one call) against "
        "the seed's dense peak at the same N, about three N x N float32 matrices. Where the "
        f"seed's estimated need would exceed {size(limit)} (the limit of dense runs, as in the "
        "tiled section), it runs at the largest N / 2^k under it and its peak is scaled by "
        "(2^k)²: an estimate, shown as such, against which the goals are then checked.\n\n"
        + table(["call", "N", "peak (MiB)", "time (ms)", "/ seed's dense peak at N"], rows)
    )
