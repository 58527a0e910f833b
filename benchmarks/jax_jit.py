"""Section ``jax``: ``jit(value_and_grad)`` time and XLA temp memory against a hand-written loss."""

from __future__ import annotations

from typing import Any

from common import Section, case, child, mib, ratio, table, timed


def run(config: dict[str, Any]) -> Section:
    section = Section(
        "jax",
        "JAX: jit(value_and_grad)",
        "`jax.jit(jax.value_and_grad(f, argnums=(0, 1)))` of `infonce_xp.info_nce` against a "
        "hand-written version (normalise, `logits = q @ k.T / t`, "
        "`mean(logsumexp(logits, 1) - diag(logits))` with `jax.nn.logsumexp`), float32 on the "
        "CPU. Temporary memory is XLA's own account: "
        "`jitted.lower(q, k).compile().memory_analysis().temp_size_in_bytes`.",
    )
    spec = {"job": "jax", "sizes": config["jax_sizes"], "budget_s": config["jax_budget_s"]}
    result = child(spec, config)
    if isinstance(result, str):
        section.add(f"Not measured: {result}")
        return section
    rows = []
    for row in result["rows"]:
        t = {k: v["median"] for k, v in row["times"].items()}
        temp = row["temp_bytes"]
        time_ratio = t["infonce_xp"] / t["hand_written"]
        temp_known = None not in temp.values() and temp["hand_written"] > 0
        rows.append(
            [
                row["n"],
                row["d"],
                timed(row["times"]["infonce_xp"]),
                timed(row["times"]["hand_written"]),
                f"{time_ratio:.2f}x",
                "-" if temp["infonce_xp"] is None else mib(temp["infonce_xp"]),
                "-" if temp["hand_written"] is None else mib(temp["hand_written"]),
                ratio(temp["infonce_xp"], temp["hand_written"]) if temp_known else "-",
            ]
        )
        name = case(row["n"], row["d"])
        section.measure(name, "time xp / hand-written", time_ratio)
        if temp_known:
            temp_ratio = temp["infonce_xp"] / temp["hand_written"]
            section.measure(name, "temp memory xp / hand-written", temp_ratio)
    header = ["N", "D", "infonce_xp (ms)", "hand-written (ms)", "time ratio"]
    section.add(table([*header, "temp xp (MiB)", "temp hand (MiB)", "temp ratio"], rows))
    return section
