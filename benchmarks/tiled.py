"""Section ``tiled``: ``chunk_size``'s peak memory and time against N up to 131072, and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import MiB, Section, case, child, log, mib, ms, pyplot, ratio, size, table, timed

PLOT_NAME = "bench_memory.png"


def run(config: dict[str, Any]) -> Section:
    dim, chunk = config["tiled_dim"], config["tiled_chunk"]
    section = Section(
        "tiled",
        "Tiled (chunk_size): memory and time against N",
        f"PyTorch CPU forward+backward, D = {dim}, `chunk_size={chunk}` for *tiled*; *untiled* "
        "is infonce_xp without `chunk_size`. Each case runs in a fresh process; peak memory as "
        "in the memory section; time is the median of up to five calls after the first (the "
        "first alone where a call is long), not interleaved. Dense runs whose N x N matrices "
        f"would exceed {size(config['dense_limit_bytes'])} are skipped; their need is "
        "estimated from the peak per N x N matrix of the largest N measured (3 before any).",
    )
    ratio_n, ratio_dim = config["tiled_ratio_size"]
    log(f"tiled section: interleaved tiled/untiled at N={ratio_n} D={ratio_dim}")
    spec = {
        "job": "torch_time",
        "sizes": [(ratio_n, ratio_dim)],
        "impls": ["tiled", "infonce_xp"],
        "chunk": chunk,
        "budget_s": config["tiled_ratio_budget_s"],
    }
    ratio_result = child(spec, config)

    points: dict[str, list[tuple[int, float]]] = {"seed": [], "untiled": [], "tiled": []}
    per_matrix = {"seed": 3.0, "untiled": 3.0}  # N x N float32 matrices, until measured
    rows = []
    for n in config["tiled_sizes"]:
        cells: dict[str, Any] = {}
        for label, impl in (("tiled", "tiled"), ("untiled", "infonce_xp"), ("seed", "seed")):
            if label in per_matrix:
                needs = per_matrix[label] * 4 * n * n
                if needs > config["dense_limit_bytes"]:
                    cells[label] = f"skipped (needs ≈ {size(needs)})"
                    continue
            log(f"tiled section: {label} N={n}")
            spec = {
                "job": "torch_peak",
                "impl": impl,
                "n": n,
                "d": dim,
                "chunk": chunk,
                "budget_s": config["tiled_budget_s"],
            }
            result = child(spec, config)
            cells[label] = result
            if isinstance(result, dict):
                points[label].append((n, result["peak_bytes"]))
                if label in per_matrix:
                    per_matrix[label] = max(result["peak_bytes"] / (4 * n * n), 1.0)

        def peak_cell(cell: Any) -> str:
            return cell if isinstance(cell, str) else mib(cell["peak_bytes"])

        def time_cell(cell: Any) -> str:
            return "-" if isinstance(cell, str) else ms(cell["time"]["median"])

        peaks = {k: (None if isinstance(v, str) else v["peak_bytes"]) for k, v in cells.items()}
        times = {k: (None if isinstance(v, str) else v["time"]["median"]) for k, v in cells.items()}
        rows.append(
            [
                n,
                *(peak_cell(cells[k]) for k in ("tiled", "untiled", "seed")),
                ratio(peaks["tiled"], peaks["seed"]),
                *(time_cell(cells[k]) for k in ("tiled", "untiled", "seed")),
                ratio(times["tiled"], times["untiled"]),
            ]
        )
        if peaks["tiled"] is not None and peaks["seed"]:
            value = peaks["tiled"] / peaks["seed"]
            section.measure(case(n, dim), "tiled peak / seed", value, f"{value:.2%}")
    header = ["N", "tiled peak (MiB)", "untiled peak (MiB)", "seed peak (MiB)", "tiled / seed"]
    header += ["tiled (ms)", "untiled (ms)", "seed (ms)", "tiled / untiled time"]
    section.add(table(header, rows))
    if isinstance(ratio_result, str):
        section.add(
            f"Tiled against untiled at N = {ratio_n}, D = {ratio_dim}: not measured: {ratio_result}"
        )
    else:
        interleaved = ratio_result["rows"][0]["times"]
        value = interleaved["tiled"]["median"] / interleaved["infonce_xp"]["median"]
        section.add(
            f"Interleaved in one process, N = {ratio_n}, D = {ratio_dim}, `chunk_size={chunk}`:\n\n"
            + table(
                ["tiled (ms)", "untiled (ms)", "tiled / untiled", "reps"],
                [
                    [
                        timed(interleaved["tiled"]),
                        timed(interleaved["infonce_xp"]),
                        f"{value:.2f}x",
                        interleaved["tiled"]["reps"],
                    ]
                ],
            )
        )
        section.measure(case(ratio_n, ratio_dim), "time tiled / untiled", value)
    section.figure(
        PLOT_NAME, "Peak memory against N, log-log", lambda path: plot(points, path, dim, chunk)
    )
    return section


def plot(
    points: dict[str, list[tuple[int, float]]], path: Path, dim: int, chunk: int
) -> str | None:
    """Log-log peak memory against N; the reason when no plot could be made."""
    plt = pyplot()
    if plt is None:
        return "matplotlib is not installed"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"seed": ("s-", "seed (info-nce-pytorch)"), "untiled": ("o-", "infonce_xp")}
    styles["tiled"] = ("^-", f"infonce_xp, chunk_size={chunk}")
    for label, (style, name) in styles.items():
        if points.get(label):
            xs, ys = zip(*points[label], strict=True)
            ax.plot(xs, [y / MiB for y in ys], style, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (batch size)")
    ax.set_ylabel("peak memory above inputs (MiB)")
    ax.set_title(f"PyTorch CPU forward+backward, D = {dim}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
