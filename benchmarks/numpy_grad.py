"""Section ``numpy``: ``info_nce_value_and_grad`` time against the forward and its floor."""

from __future__ import annotations

import os
from typing import Any

from common import Section, child, ratio, table, timed


def run(config: dict[str, Any]) -> Section:
    section = Section(
        "numpy",
        "NumPy: value and gradient against the forward alone",
        "`info_nce_value_and_grad` (forward and the analytic backward) against `info_nce` "
        "(forward only), float32, in-batch; *matmul* is the bare `q @ k.T`. The forward does one "
        "N x N x D product, value-and-grad three. This child runs with `OPENBLAS_CORETYPE` and "
        "`OPENBLAS_L2_SIZE` removed from its environment (they can slow OpenBLAS down).",
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    spec = {"job": "numpy", "sizes": config["numpy_sizes"], "budget_s": config["numpy_budget_s"]}
    result = child(spec, config, env)
    if isinstance(result, str):
        section.add(f"Not measured: {result}")
        return section
    rows = []
    for row in result["rows"]:
        t = {k: v["median"] for k, v in row["times"].items()}
        value = t["value_and_grad"] / t["forward"]
        least = 1 + t["backward_products"] / t["forward"]
        rows.append(
            [
                row["n"],
                row["d"],
                timed(row["times"]["forward"]),
                timed(row["times"]["value_and_grad"]),
                timed(row["times"]["matmul"]),
                timed(row["times"]["backward_products"]),
                f"{value:.2f}x",
                f"{least:.2f}x",
                f"{value / least:.2f}x",
                ratio(t["forward"], t["matmul"]),
            ]
        )
        section.measure(f"N={row['n']}", "value_and_grad / info_nce", value)
        section.measure(f"N={row['n']}", "least possible", least)
    header = ["N", "D", "info_nce (ms)", "value_and_grad (ms)", "matmul (ms)", "products (ms)"]
    header += ["value_and_grad / info_nce", "least possible", "against the floor"]
    section.add(table([*header, "info_nce / matmul"], rows))
    section.add(
        "*products* are the two matrix products that any gradient of the loss needs, an (N, N) "
        "matrix times the keys and, transposed, times the queries (`g @ k`, `g.T @ q`). "
        "*least possible* is 1 + products / info_nce: no value-and-grad can take less than the "
        "forward plus these products. Where it exceeds 1.5, the 1.5x goal cannot be met on this "
        "machine. *against the floor* is value_and_grad / (info_nce + products), the same "
        "measurement over that least possible time: the 1.5x goal restated against the floor is "
        "1.5 / *least possible*."
    )
    return section
