"""Draw which (query, key) pairs are positives and negatives in each negative mode.

Run by ``conf.py`` at build time; ``python docs/figures.py OUT.png`` draws it by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

N, M = 4, 3  # queries, negatives per query
POSITIVE, NEGATIVE = "#4c9f70", "#e07a5f"


def labels(mode: str) -> list[list[str]]:
    """The key scored in each cell of one mode's panel (row i: query i's candidates)."""
    rows = range(1, N + 1)
    if mode == "in-batch":
        return [[f"$k_{j}$" for j in rows] for _ in rows]
    if mode == "unpaired":
        return [[f"$k_{i}$"] + [f"$n_{j}$" for j in range(1, M + 1)] for i in rows]
    return [[f"$k_{i}$"] + [f"$n_{{{i}{j}}}$" for j in range(1, M + 1)] for i in rows]


def is_positive(mode: str, i: int, j: int) -> bool:
    return i == j if mode == "in-batch" else j == 0


def panel(ax: plt.Axes, mode: str, title: str, subtitle: str) -> None:
    cells = labels(mode)
    for i, row in enumerate(cells):
        for j, text in enumerate(row):
            color = POSITIVE if is_positive(mode, i, j) else NEGATIVE
            ax.add_patch(plt.Rectangle((j, i), 0.94, 0.94, color=color, alpha=0.85))
            ax.text(j + 0.47, i + 0.47, text, ha="center", va="center", color="white", fontsize=12)
    ax.set_xlim(-0.1, len(cells[0]))
    ax.set_ylim(N, -0.1)
    ax.set_xticks([])
    ax.set_yticks([i + 0.47 for i in range(N)], [f"$q_{i}$" for i in range(1, N + 1)])
    ax.tick_params(length=0, labelsize=11)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(subtitle, fontsize=10)


def main(out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(10, 4), layout="constrained")
    panel(axes[0], "in-batch", "in-batch (no negative_keys)", "keys: positive_key (N, D)")
    panel(axes[1], "unpaired", 'negative_mode="unpaired"', "negatives: (M, D), shared")
    panel(axes[2], "paired", 'negative_mode="paired"', "negatives: (N, M, D), per query")
    fig.legend(
        handles=[Patch(color=POSITIVE, label="positive"), Patch(color=NEGATIVE, label="negative")],
        loc="outside lower center",
        ncol=2,
        frameon=False,
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "negatives.png"))
