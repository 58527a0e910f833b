"""Section ``recipes``: what labels cost, in time (dense) and in peak memory (tiled)."""

from __future__ import annotations

from typing import Any

from _worker_recipes import BASE, IMPLS
from common import Section, case, child, log, mib, ratio, size, table, timed


def run(config: dict[str, Any]) -> Section:
    (n, dim), classes = config["recipes_size"], config["recipes_classes"]
    section = Section(
        "recipes",
        "Recipes: the cost of labels",
        f"PyTorch CPU forward+backward of an in-batch call with `labels` of {classes} classes "
        "against the same call without labels, implementations interleaved in one child "
        "process (times: medians in ms, interquartile range in brackets).",
    )
    log(f"recipes: interleaved at N={n} D={dim}")
    spec = {
        "job": "recipes_time",
        "size": (n, dim),
        "classes": classes,
        "impls": list(IMPLS),
        "budget_s": config["recipes_budget_s"],
    }
    result = child(spec, config)
    if isinstance(result, str):
        section.add(f"Not measured: {result}")
    else:
        times = result["times"]
        rows = [
            [impl, timed(t), ratio(t["median"], times[BASE[impl]]["median"])]
            for impl, t in times.items()
        ]
        section.add(table(["call", "time (ms)", "/ label-free (same candidates)"], rows))
        for impl in ("own", "supcon"):
            value = times[impl]["median"] / times["label-free"]["median"]
            section.measure(case(n, dim), f"{impl} / label-free", value)
    tiled_part(section, config)
    return section


def tiled_part(section: Section, config: dict[str, Any]) -> None:
    n, dim, chunk = config["recipes_tiled"]
    classes = config["recipes_classes"]
    seed_estimate = 3 * 4 * n * n  # the seed's untiled peak: three N x N float32 matrices
    rows = []
    for impl in ("label-free", "own", "supcon", "pairs"):
        log(f"recipes: tiled {impl} N={n}")
        spec = {"job": "recipes_peak", "impl": impl, "n": n, "d": dim, "chunk": chunk}
        result = child({**spec, "classes": classes}, config)
        if isinstance(result, str):
            rows.append([impl, result, "-", "-"])
            continue
        peak = result["peak_bytes"]
        rows.append([impl, mib(peak), f"{peak / seed_estimate:.2%}", timed(result["time"])])
        if impl in ("own", "supcon"):
            value = peak / seed_estimate
            section.measure(case(n, dim), f"tiled {impl} peak / seed", value, f"{value:.2%}")
    section.add(
        f"Tiled, N = {n}, D = {dim}, `chunk_size={chunk}`, each in a fresh process: peak "
        f"memory above the inputs against the seed's untiled peak, estimated as three N x N "
        f"float32 matrices ({size(seed_estimate)}; the memory section measures about three):\n\n"
        + table(["call", "peak (MiB)", "/ seed (estimated)", "time (ms)"], rows)
        + "\n\nThe peak is the process's resident size under glibc's default allocator "
        "settings (no `MALLOC_*` variable), so it includes what the allocator keeps after "
        "freeing. The tiled backward adds each tile's gradient into buffers made once per call, "
        "where it used to stack and sum an (N, D) array per block of rows: freed among the "
        "tiles' temporaries, those left the heap too fragmented to reuse, and the peak grew with "
        "the number of tiles (to 633 MiB, varying from run to run). It is now close to the "
        "arrays alive at once."
    )
