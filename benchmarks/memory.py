"""Section ``memory``: peak RSS of one PyTorch forward+backward, each case in a fresh process."""

from __future__ import annotations

from typing import Any

from common import Section, case, child, log, matrices, mib, ratio, table


def peak_of(result: Any) -> float | None:
    return None if isinstance(result, str) else float(result["peak_bytes"])


def run(config: dict[str, Any]) -> Section:
    section = Section(
        "memory",
        "PyTorch: peak memory of forward + backward",
        "Each case runs in a fresh process: the inputs are made, then the peak resident set "
        "size of one forward+backward is read (Linux: VmHWM after resetting it through "
        "/proc/self/clear_refs) and the resident size before the call is subtracted. The "
        "*floor*'s random upstream gradient counts as an input. The last columns give the "
        "peaks in units of one N x N float32 matrix; at small N, allocator and page noise dominate.",
    )
    rows, method = [], None
    for n, dim in config["memory_sizes"]:
        peaks = {}
        for impl in ("infonce_xp", "seed", "floor"):
            log(f"memory {impl} N={n} D={dim}")
            result = child({"job": "torch_peak", "impl": impl, "n": n, "d": dim}, config)
            peaks[impl] = peak_of(result)
            if isinstance(result, dict):
                method = result["method"]
        shown = {k: ("failed" if v is None else mib(v)) for k, v in peaks.items()}
        rows.append(
            [
                n,
                dim,
                shown["infonce_xp"],
                shown["seed"],
                shown["floor"],
                ratio(peaks["infonce_xp"], peaks["seed"]),
                ratio(peaks["infonce_xp"], peaks["floor"]),
                "-" if peaks["infonce_xp"] is None else matrices(peaks["infonce_xp"], n),
                "-" if peaks["seed"] is None else matrices(peaks["seed"], n),
            ]
        )
        if peaks["infonce_xp"] is not None and peaks["seed"]:
            section.measure(case(n, dim), "peak xp / seed", peaks["infonce_xp"] / peaks["seed"])
    header = ["N", "D", "infonce_xp (MiB)", "seed (MiB)", "floor (MiB)", "xp / seed", "xp / floor"]
    section.add(table([*header, "xp (N x N)", "seed (N x N)"], rows))
    if method:
        section.add(f"Peak read with: {method}.")
    return section
