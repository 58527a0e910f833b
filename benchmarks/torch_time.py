"""Section ``torch``: PyTorch CPU forward+backward time of infonce_xp, the seed and the floor."""

from __future__ import annotations

from typing import Any

from common import Section, case, child, ratio, table, timed
from goals import GOALS

TITLE = "PyTorch: forward + backward time"


def run(config: dict[str, Any]) -> Section:
    section = Section(
        "torch",
        TITLE,
        "CPU, float32, in-batch negatives, default temperature; one call computes the loss and "
        "the gradients of `query` and `positive_key`. *floor* is the bare `q @ k.T` and its "
        "backward under a fixed random upstream gradient (three N x N x D matrix products), which "
        "no InfoNCE can beat. The implementations alternate within each repetition; times are "
        "medians in ms with the interquartile range in brackets.",
    )
    spec = {
        "job": "torch_time",
        "sizes": config["torch_sizes"],
        "impls": ["infonce_xp", "seed", "floor"],
        "budget_s": config["torch_budget_s"],
    }
    result = child(spec, config)
    if isinstance(result, str):
        section.add(f"Not measured: {result}")
        return section
    bounds = {g.case: g.bound for g in GOALS if g.section == "torch"}
    rows = []
    for row in result["rows"]:
        t = {k: v["median"] for k, v in row["times"].items()}
        name = case(row["n"], row["d"])
        section.measure(name, "time xp / seed", t["infonce_xp"] / t["seed"])
        section.measure(name, "floor / seed", t["floor"] / t["seed"])
        bound = bounds.get(name)
        rows.append(
            [
                row["n"],
                row["d"],
                timed(row["times"]["infonce_xp"]),
                timed(row["times"]["seed"]),
                timed(row["times"]["floor"]),
                ratio(t["infonce_xp"], t["seed"]),
                ratio(t["infonce_xp"], t["floor"]),
                ratio(t["seed"], t["floor"]),
                # The goal restated against the floor: what it leaves for all but the products.
                "-" if bound is None else f"{bound * t['seed'] / t['floor']:.2f}x",
                row["times"]["seed"]["reps"],
            ]
        )
    header = ["N", "D", "infonce_xp", "seed", "floor", "xp / seed", "xp / floor", "seed / floor"]
    section.add(table([*header, "goal / floor", "reps"], rows))
    section.add(
        "*goal / floor* is the goal restated against the floor (goal x seed / floor): how much "
        "time it leaves, over the three matrix products, for everything else: normalising, the "
        "exponentials over N x N, the autograd bookkeeping."
    )
    return section
