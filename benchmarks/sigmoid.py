"""Section ``sigmoid``: the sigmoid loss (SigLIP) of infonce_xp against open_clip's
``SigLipLoss``: forward+backward time (dense), and the tiled peak memory against open_clip's
dense peak; and ``exchange="ring"`` against ``exchange="gather"`` on gloo processes: time per
step and peak per process."""

from __future__ import annotations

import os
from typing import Any

import common
from _worker_sigmoid import BASE, BIAS, IMPLS, OPEN_CLIP, SCALE
from common import Section, case, log, mib, size, table, timed

# This section's sizes, by run: the full run's are those its goals name (``config["goals"]``
# says which run this is). A key of the same name in ``config`` wins.
FULL: dict[str, Any] = {
    "sigmoid_sizes": [(4096, 512), (8192, 256)],
    "sigmoid_budget_s": 60.0,  # per size: ~10 interleaved rounds of the three calls on 2 cores
    "sigmoid_tiled": (32768, 128, 1024),  # N, D, chunk_size
    "sigmoid_dense_n": 8192,  # the largest N at which open_clip's dense peak is measured
    # the exchanges on gloo processes: rows per process, D, chunk_size; the numbers of
    # processes; the timed steps after the warm-up; the time limit of each launch (~1 min at
    # W = 4 on 2 cores)
    "sigmoid_gloo": (4096, 256, 1024),
    "sigmoid_gloo_worlds": [2, 4],
    "sigmoid_gloo_reps": 5,
    "sigmoid_gloo_timeout_s": 900,
}
QUICK: dict[str, Any] = {
    "sigmoid_sizes": [(128, 32)],
    "sigmoid_budget_s": 0.2,
    "sigmoid_tiled": (256, 16, 64),
    "sigmoid_dense_n": 256,
    "sigmoid_gloo": (64, 16, 16),
    "sigmoid_gloo_worlds": [2, 4],
    "sigmoid_gloo_reps": 2,
    "sigmoid_gloo_timeout_s": 120,
}
# open_clip's dense peak in N x N float32 matrices, the estimate that chooses the N it runs at
# (measured: 6.23 at N = 2048, 5.03 at 8192): the logits, the labels (-1 everywhere, +2 on the
# diagonal: two matrices), their product, logsigmoid's output and the gradient of the logits
OPEN_CLIP_MATRICES = 6.0
TILED = ("SigLipLoss", "SigmoidLoss")  # ours, each measured tiled
EXCHANGES = ("gather", "ring")  # sigmoid_loss(..., gather=all_gather, exchange=...) under gloo

# call -> how the report shows it
SHOWN = {
    "open_clip": f"open_clip 3.3.0 `SigLipLoss()(image, text, logit_scale, logit_bias)` "
    f"(`{OPEN_CLIP} --no-deps`, its `loss.py` loaded alone)",
    "SigLipLoss": "`infonce_xp.peers.open_clip.SigLipLoss()(image, text, logit_scale, logit_bias)`",
    "SigmoidLoss": "`infonce_xp.torch.SigmoidLoss(learn_temperature=True, learn_bias=True, "
    "normalize=False)(image, text)`",
}


def settings(config: dict[str, Any]) -> dict[str, Any]:
    return {**(FULL if config["goals"] else QUICK), **config}


def run(config: dict[str, Any]) -> Section:
    config = settings(config)
    section = Section(
        "sigmoid",
        "Sigmoid loss (SigLIP) against open_clip",
        "PyTorch CPU float32 forward+backward of the sigmoid loss: the gradients of both "
        "feature arrays (unit rows, as open_clip's model gives them) and of the learned logit "
        f"scale and bias (0-D tensors, at SigLIP's start: {SCALE:g} and {BIAS:g}), "
        "infonce_xp's two ways of calling it against open_clip's own `SigLipLoss`, "
        "interleaved in one child process (times: medians in ms, interquartile range in "
        "brackets).\n\n" + "\n".join(f"- `{impl}`: {SHOWN[impl]}" for impl in IMPLS),
    )
    sizes = config["sigmoid_sizes"]
    log(f"sigmoid: interleaved at {sizes}")
    spec = {
        "job": "sigmoid_time",
        "sizes": sizes,
        "impls": list(IMPLS),
        "budget_s": config["sigmoid_budget_s"],
    }
    result = common.child(spec, config)
    if isinstance(result, str):
        section.add(f"Not measured: {result}")
    else:
        for impl, reason in result["skipped"].items():
            section.add(f"`{impl}`: {reason}.")
        rows = []
        ours = [impl for impl in IMPLS if impl != BASE]
        for row in result["rows"]:
            n, dim, times = row["n"], row["d"], row["times"]
            cells: list[Any] = [n, dim]
            cells += [timed(times[impl]) if impl in times else "-" for impl in IMPLS]
            for impl in ours:
                if impl in times and BASE in times:
                    value = times[impl]["median"] / times[BASE]["median"]
                    cells.append(f"{value:.2f}x")
                    section.measure(case(n, dim), f"time {impl} / open_clip", value)
                else:
                    cells.append("-")
            reps = [t["reps"] for t in times.values()]
            rows.append([*cells, min(reps) if reps else "-"])
        header = ["N", "D", *(f"{impl} (ms)" for impl in IMPLS)]
        header += [f"{impl} / open_clip" for impl in ours]
        section.add(table([*header, "reps"], rows))
    tiled_part(section, config)
    gloo_part(section, config)
    return section


def dense_size(n: int, most: int, limit: float) -> int:
    """The largest N / 2^k, at most ``most``, at which open_clip's dense call is estimated to
    fit under ``limit``."""
    at = n
    while at > 1 and (at > most or OPEN_CLIP_MATRICES * 4 * at * at > limit):
        at //= 2
    return at


def tiled_part(section: Section, config: dict[str, Any]) -> None:
    """Our tiled peak at N against open_clip's dense peak there: measured at N where it fits
    under the dense limit (and ``sigmoid_dense_n``), else at the largest N / 2^k that does,
    and scaled by 4^k."""
    n, dim, chunk = config["sigmoid_tiled"]
    limit = config["dense_limit_bytes"]
    at = dense_size(n, config["sigmoid_dense_n"], limit)
    log(f"sigmoid: dense open_clip N={at}")
    peer = common.child({"job": "sigmoid_peak", "impl": BASE, "n": at, "d": dim}, config)
    rows, peer_at_n = [], None
    reason = peer if isinstance(peer, str) else peer.get("skipped")
    if reason is not None:
        rows.append(["open_clip, dense", at, reason, "-", "-"])
    else:
        peer_at_n = peer["peak_bytes"] * (n / at) ** 2
        rows.append(["open_clip, dense", at, mib(peer["peak_bytes"]), timed(peer["time"]), "-"])
        if at < n:
            matrices = peer["peak_bytes"] / (4 * at * at)
            call = f"open_clip, dense, scaled: {matrices:.2f} N x N matrices as at N = {at}"
            rows.append([call, n, f"≈ {mib(peer_at_n)}", "not run", "-"])
    scaled = f" (open_clip scaled from N = {at})" if at < n else ""
    for impl in TILED:
        log(f"sigmoid: tiled {impl} N={n}")
        spec = {"job": "sigmoid_peak", "impl": impl, "n": n, "d": dim, "chunk": chunk}
        result = common.child(spec, config)
        call = f"`{impl}`, `chunk_size={chunk}`"
        if isinstance(result, str):
            rows.append([call, n, result, "-", "-"])
            continue
        peak = result["peak_bytes"]
        value = None if not peer_at_n else peak / peer_at_n
        rows.append(
            [call, n, mib(peak), timed(result["time"]), "-" if value is None else f"{value:.2%}"]
        )
        if value is not None:
            quantity = f"tiled {impl} peak / open_clip dense peak"
            section.measure(case(n, dim), quantity, value, f"{value:.2%}{scaled}")
    section.add(
        f"Tiled, N = {n}, D = {dim}, `chunk_size={chunk}`, each call in a fresh process: peak "
        "resident memory above the inputs (as in the memory section; time: one call) against "
        "open_clip's dense peak at the same N, about six N x N float32 matrices. open_clip "
        f"runs at N ≤ {config['sigmoid_dense_n']} and where its estimated need stays under "
        f"{size(limit)} (the limit of dense runs, as in the tiled section); where that is "
        "below N, its peak is scaled by (N / its N)²: an estimate, shown as such, against "
        "which the goals are then checked.\n\n"
        + table(["call", "N", "peak (MiB)", "time (ms)", "/ open_clip's dense peak at N"], rows)
    )


def gloo_part(section: Section, config: dict[str, Any]) -> None:
    """Each exchange on W gloo processes: the slowest rank's time per step, the largest peak
    per process, and the ring's ratios to the gather."""
    n, dim, chunk = config["sigmoid_gloo"]
    reps, rows = config["sigmoid_gloo_reps"], []
    for world in config["sigmoid_gloo_worlds"]:
        got: dict[str, dict[str, Any]] = {}
        for exchange in EXCHANGES:
            log(f"sigmoid: gloo W={world} exchange={exchange} N={n} per process")
            spec = {
                "job": "sigmoid_gloo",
                "world": world,
                "exchange": exchange,
                "n": n,
                "d": dim,
                "chunk": chunk,
                "reps": reps,
                "timeout_s": config["sigmoid_gloo_timeout_s"],
            }
            # the launch's own limit kills hung ranks; the child's leaves it time to report
            result = common.child(
                spec, {**config, "child_timeout_s": config["sigmoid_gloo_timeout_s"] + 60}
            )
            reason = result if isinstance(result, str) else result.get("skipped")
            if reason is not None:
                rows.append([world, f"`{exchange}`", reason, "-", "-", "-", "-"])
                continue
            got[exchange] = result
            cells: list[Any] = ["-", "-"]
            if exchange != "gather" and "gather" in got:
                base = got["gather"]
                ratios = [
                    ("time", result["time"]["median"] / base["time"]["median"]),
                    ("peak", result["peak_bytes"] / max(base["peak_bytes"], 1)),
                ]
                for i, (what, value) in enumerate(ratios):
                    cells[i] = f"{value:.2f}x"
                    section.measure(
                        f"W={world}, {case(n, dim)}", f"gloo {what} ring / gather", value
                    )
            rows.append(
                [
                    world,
                    f"`{exchange}`",
                    timed(result["time"]),
                    mib(result["peak_bytes"]),
                    mib(result["hwm_bytes"]),
                    *cells,
                ]
            )
    cores = os.cpu_count() or 1
    section.add(
        "The two exchanges under `torch.distributed` (gloo, TCP on 127.0.0.1): W processes on "
        f"this machine's {cores} cores, one torch thread each, every process with its own "
        f"{n} queries and {n} keys of D = {dim}, forward+backward of `sigmoid_loss(q, k, 0.1, "
        f"-10.0, gather=infonce_xp.torch.all_gather, exchange=..., chunk_size={chunk})`, each "
        "exchange and W in fresh processes. `gather` all-gathers every worker's keys (W N x D, "
        "and their gradient, summed over the workers); `ring` passes the key blocks round by "
        "point-to-point send and receive, holding its own and one other, their gradients "
        "travelling home with them. Time: the median over "
        f"{reps} steps of the slowest rank's step, after a warm-up step (interquartile range in "
        "brackets)"
        + (
            f"; where W exceeds the {cores} cores, the processes share them"
            if any(w > cores for w in config["sigmoid_gloo_worlds"])
            else ""
        )
        + ". Peak per process: the resident memory above the inputs of the first full-size "
        "step (VmHWM reset through `/proc/self/clear_refs` just before it, the warm-up on a "
        "small call), the largest over the ranks; VmHWM: the whole process's high-water mark "
        "in that step (torch and gloo included).\n\n"
        + table(
            [
                "W",
                "exchange",
                "time per step (ms)",
                "peak per process (MiB)",
                "VmHWM per process (MiB)",
                "time ring / gather",
                "peak ring / gather",
            ],
            rows,
        )
    )
