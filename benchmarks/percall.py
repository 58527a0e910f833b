"""Section ``percall``: the cost of one call against N (eager and compiled torch, JAX eager,
NumPy) and the kernels each mode launches, infonce_xp against the seed and hand-written versions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from common import Section, case, child, log, pyplot, ratio, table, timed

PLOT_NAME = "bench_percall.png"
TORCH_IMPLS = [
    "infonce_xp",
    "seed",
    "infonce_xp compiled",
    "seed compiled",
    "same math by hand",
    "floor",
]


def run(config: dict[str, Any]) -> Section:
    dim = config["percall_dim"]
    section = Section(
        "percall",
        "Per-call cost: small batches and kernel counts",
        "What one call costs where the arithmetic is small, so that the fixed cost of a call "
        "(input checks, the array-API layer, the number of kernels and their dispatch) is what "
        "is measured. Each table comes from one child process, implementations interleaved; "
        "times are medians in ms with the interquartile range in brackets.",
    )
    torch_part(section, config, dim)
    kernels_part(section, config)
    small_part(section, config, "jax", "JAX eager: value_and_grad without jit")
    small_part(section, config, "numpy", "NumPy: value and gradient")
    return section


def torch_part(section: Section, config: dict[str, Any], dim: int) -> None:
    sweep = [(n, dim) for n in config["percall_ns"]]
    sizes = sorted({*sweep, *map(tuple, config["percall_goal_sizes"])})
    log(f"per-call torch at {len(sizes)} sizes")
    spec = {
        "job": "percall_torch",
        "sizes": sizes,
        "impls": TORCH_IMPLS,
        "budget_s": config["percall_budget_s"],
    }
    result = child(spec, config)
    section.add(
        "### PyTorch: forward + backward against N\n\n"
        "CPU, float32, in-batch, autograd (`.backward()` of the loss), as in the PyTorch "
        "section. *compiled* is `torch.compile(loss, fullgraph=True, dynamic=False)`, compiled "
        "for each size before timing (the notes below the table say where `fullgraph=True` "
        "could not trace the loss and graph breaks were allowed instead). Ratios are to the "
        "eager seed; *floor* is the bare `q @ k.T` and its backward. *same math by hand* is "
        "infonce_xp's own operations written out in one `torch.autograd.Function` with nothing "
        "around them (`torch_by_hand` in `_worker_percall.py`; a test checks that it gives "
        "infonce_xp's loss and gradients): the least that this math costs per call, with no "
        "input check, dispatch or array-API layer. *xp / by hand* is what that layer costs."
    )
    if isinstance(result, str):
        section.add(f"Not measured: {result}")
        return
    rows, points, how = [], {}, {}
    for row in result["rows"]:
        t = {k: v["median"] for k, v in row["times"].items()}
        name = case(row["n"], row["d"])
        seed = t.get("seed")
        if "infonce_xp" in t and seed:
            section.measure(name, "time xp / seed", t["infonce_xp"] / seed)
            section.measure(name, "floor / seed", t["floor"] / seed)
            if "same math by hand" in t:
                section.measure(name, "by hand / seed", t["same math by hand"] / seed)
        if t.get("infonce_xp compiled") and t.get("seed compiled"):
            compiled = t["infonce_xp compiled"] / t["seed compiled"]
            section.measure(name, "compiled xp / compiled seed", compiled)
        cells = [timed(row["times"][k]) if k in t else "failed" for k in TORCH_IMPLS]
        ratios = [ratio(t.get(k), seed) for k in TORCH_IMPLS if k != "seed"]
        layer = ratio(t.get("infonce_xp"), t.get("same math by hand"))
        rows.append([row["n"], row["d"], *cells, *ratios, layer])
        if row["d"] == dim:
            for impl, seconds in t.items():
                points.setdefault(impl, []).append((row["n"], seconds))
        for impl, compiled in row["compiled"].items():
            if compiled:
                how.setdefault(impl, []).append((name, compiled))
    header = ["N", "D", *TORCH_IMPLS, "xp / seed", "xp compiled / seed", "seed compiled / seed"]
    section.add(table([*header, "by hand / seed", "floor / seed", "xp / by hand"], rows))
    lines = []
    for impl, notes in how.items():
        broken = [f"{name}: {c['failure']}" for name, c in notes if not c.get("fullgraph")]
        seconds = [f"{c['seconds']:.1f}" for _, c in notes if "seconds" in c]
        state = "fell back at " + "; ".join(broken) if broken else "`fullgraph=True` everywhere"
        lines.append(f"- *{impl}*: {state}; compiled in {', '.join(seconds)} s (by size).")
    section.add("How each loss compiled:\n\n" + "\n".join(lines))
    section.figure(
        PLOT_NAME,
        "Forward+backward time per call against N, log-log",
        lambda path: plot(points, path, dim),
    )


def kernels_part(section: Section, config: dict[str, Any]) -> None:
    n, m, dim = config["kernel_size"]
    log("per-call kernel counts")
    result = child({"job": "kernels", "size": [n, m, dim]}, config)
    section.add(
        "### Kernels per forward + backward\n\n"
        f"ATen ops that compute, counted by `benchmarks/kernels.py: count_kernels` with "
        f"`torch.profiler` over one forward+backward (N = {n}, M = {m} negatives, D = {dim}; "
        "the count is the same at every size where all inputs hold at most "
        "`infonce_xp._stacks.STACK_LIMIT` numbers together and are normalised as one stack; "
        "beyond, each input group adds its own nine): views, allocations and ops whose work is "
        "done by the ops below them are not counted (its docstring says exactly what is). "
        "Every input requires grad unless the mode says otherwise. The seed's symmetric loss "
        "is the mean of its two directions."
    )
    if isinstance(result, str):
        section.add(f"Not measured: {result}")
        return
    rows = []
    for row in result["rows"]:
        ours, seed = (sum(row["counts"][k].values()) for k in ("infonce_xp", "seed"))
        rows.append([row["mode"], ours, seed, f"{ours - seed:+d}"])
        section.measure(row["mode"], "kernels xp / seed", ours / seed, f"{ours} vs {seed}")
    section.add(table(["mode", "infonce_xp", "seed", "difference"], rows))
    first = result["rows"][0]
    detail = []
    for impl, counts in first["counts"].items():
        ops = ", ".join(f"{op.removeprefix('aten::')} {k}" for op, k in sorted(counts.items()))
        detail.append(f"- *{impl}*, {first['mode']}: {ops}.")
    section.add("The ops of one " + first["mode"] + " call:\n\n" + "\n".join(detail))


def small_part(section: Section, config: dict[str, Any], library: str, title: str) -> None:
    dim = config["percall_dim"]
    log(f"per-call {library}")
    spec = {
        "job": f"percall_{library}",
        "ns": config["percall_small_ns"],
        "d": dim,
        "budget_s": config["percall_small_budget_s"],
    }
    env = None
    if library == "numpy":  # as in the NumPy section
        drop = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
        env = {k: v for k, v in os.environ.items() if k not in drop}
    result = child(spec, config, env)
    what = {
        "jax": "`jax.value_and_grad(f, argnums=(0, 1))` called eagerly (no `jit`), of "
        "`infonce_xp.info_nce` (its `custom_vjp`) and of the hand-written version of the JAX "
        "section",
        "numpy": "`info_nce_value_and_grad` against the same loss and analytic gradient "
        "written by hand in NumPy (`numpy_value_and_grad` in `_worker_percall.py`)",
    }[library]
    section.add(f"### {title}\n\n{what}; float32, in-batch, D = {dim}.")
    if isinstance(result, str):
        section.add(f"Not measured: {result}")
        return
    rows = []
    for row in result["rows"]:
        t = {k: v["median"] for k, v in row["times"].items()}
        times = row["times"]
        rows.append(
            [
                row["n"],
                row["d"],
                timed(times["infonce_xp"]),
                timed(times["hand_written"]),
                ratio(t["infonce_xp"], t["hand_written"]),
                f"{(t['infonce_xp'] - t['hand_written']) * 1e6:,.0f}",
            ]
        )
    header = ["N", "D", "infonce_xp (ms)", "hand-written (ms)", "xp / hand", "xp - hand (µs)"]
    section.add(table(header, rows))


def plot(points: dict[str, list[tuple[int, float]]], path: Path, dim: int) -> str | None:
    """Log-log time per call against N, and each implementation over the seed."""
    plt = pyplot()
    if plt is None:
        return "matplotlib is not installed"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    styles = {  # the same colour for an implementation in both panels
        "seed": ("s-", "C0", "seed"),
        "infonce_xp": ("o-", "C1", "infonce_xp"),
        "seed compiled": ("s--", "C2", "seed, torch.compile"),
        "infonce_xp compiled": ("o--", "C3", "infonce_xp, torch.compile"),
        "same math by hand": ("^-.", "C5", "infonce_xp's math by hand"),
        "floor": (":", "C4", "floor (q @ k.T, backward)"),
    }
    seed = dict(points.get("seed", []))
    for impl, (style, color, label) in styles.items():
        if not points.get(impl):
            continue
        xs, ys = zip(*sorted(points[impl]), strict=True)
        left.plot(xs, [y * 1e3 for y in ys], style, color=color, label=label)
        if impl != "seed" and seed:
            pairs = [(x, y / seed[x]) for x, y in zip(xs, ys, strict=True) if x in seed]
            right.plot(*zip(*pairs, strict=True), style, color=color, label=label)
    right.axhline(1.0, color="C0", linewidth=1.0, label="seed")
    left.set_ylabel("time per call (ms)")
    right.set_ylabel("time / seed's time")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N (batch size)")
        ax.grid(True, which="both", alpha=0.3)
    for axis in (right.yaxis.set_major_formatter, right.yaxis.set_minor_formatter):
        axis(plt.matplotlib.ticker.FormatStrFormatter("%gx"))  # after set_yscale, which resets it
    left.legend(fontsize="small")
    fig.suptitle(f"PyTorch CPU float32 forward+backward, in-batch, D = {dim}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
