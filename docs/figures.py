"""Draw which (query, key) pairs are positives and negatives (the negative modes and the
recipes), how the soft-target options reshape one row's targets, which cells the sigmoid loss
scores next to InfoNCE, and how the ring passes key blocks between workers.

Run by ``conf.py`` at build time;
``python docs/figures.py OUT.png [RECIPES.png [TARGETS.png [SIGMOID.png [RING.png]]]]`` draws
them by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

N, M = 4, 3  # queries, negatives per query
POSITIVE, NEGATIVE = "#4c9f70", "#e07a5f"
SUPCON = "#8cc7a1"  # a same-class candidate counted as a positive
IGNORED = "#b8b8b8"  # a same-class candidate dropped from the denominator
HIDDEN = "#f2f2f2"  # a query's own entry in the same-view block
CLASSES = "AABC"  # labels of the four rows in the recipes figure


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


def recipe_cells(recipe: str) -> list[list[tuple[str, str]]]:
    """(text, colour) of each candidate of each query, for one recipe (rows labelled CLASSES)."""
    rows = range(N)
    keys = [[f"$k_{j + 1}$" for j in rows] for _ in rows]

    def by_label(i: int, j: int, same_class: str) -> str:
        if i == j:
            return POSITIVE
        return same_class if CLASSES[i] == CLASSES[j] else NEGATIVE

    if recipe in ("own", "supcon"):
        same = IGNORED if recipe == "own" else SUPCON
        return [[(keys[i][j], by_label(i, j, same)) for j in rows] for i in rows]
    if recipe == "same-view":
        return [
            [(keys[i][j], POSITIVE if i == j else NEGATIVE) for j in rows]
            + [("" if i == j else f"$q_{j + 1}$", HIDDEN if i == j else NEGATIVE) for j in rows]
            for i in rows
        ]
    return [  # in_batch_negatives=True with paired hard negatives
        [(keys[i][j], POSITIVE if i == j else NEGATIVE) for j in rows]
        + [(f"$n_{{{i + 1}{m + 1}}}$", NEGATIVE) for m in range(2)]
        for i in rows
    ]


def recipe_panel(ax: plt.Axes, recipe: str, title: str, subtitle: str) -> None:
    cells = recipe_cells(recipe)
    for i, row in enumerate(cells):
        for j, (text, color) in enumerate(row):
            ax.add_patch(plt.Rectangle((j, i), 0.94, 0.94, color=color, alpha=0.85))
            ax.text(j + 0.47, i + 0.47, text, ha="center", va="center", color="white", fontsize=11)
    if recipe != "own" and recipe != "supcon":  # the block after the in-batch keys
        ax.axvline(N - 0.03, color="black", linewidth=1)
    ax.set_xlim(-0.1, len(cells[0]))
    ax.set_ylim(N, -0.1)
    ax.set_xticks([])
    labels = [
        f"$q_{i + 1}$ ({CLASSES[i]})" if recipe in ("own", "supcon") else f"$q_{i + 1}$"
        for i in range(N)
    ]
    ax.set_yticks([i + 0.47 for i in range(N)], labels)
    ax.tick_params(length=0, labelsize=10)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10.5)
    ax.set_xlabel(subtitle, fontsize=9.5)


def recipes(out: Path) -> None:
    fig, axes = plt.subplots(
        1, 4, figsize=(13, 3.9), layout="constrained", width_ratios=[N, N, 2 * N, N + 2]
    )
    recipe_panel(axes[0], "own", f"labels={CLASSES}", 'positives="own" (default)')
    recipe_panel(axes[1], "supcon", f"labels={CLASSES}", 'positives="supcon" / "pairs"')
    recipe_panel(axes[2], "same-view", "same_view_negatives=True", "keys | other queries (SimCLR)")
    recipe_panel(axes[3], "hard", "in_batch_negatives=True", "keys | own hard negatives (paired)")
    fig.legend(
        handles=[
            Patch(color=POSITIVE, label="own positive"),
            Patch(color=SUPCON, label="same class: positive"),
            Patch(color=IGNORED, label="same class: ignored"),
            Patch(color=NEGATIVE, label="negative"),
            Patch(color=HIDDEN, label="itself: hidden"),
        ],
        loc="outside lower center",
        ncol=5,
        frameon=False,
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


# One row of the targets figure: the teacher's cosines with the row's 8 candidates, k_1 its own
# positive and k_2 a near-duplicate of it (a false negative to a one-hot target).
TEACHER_COSINES = np.array([0.80, 0.72, 0.45, 0.30, 0.20, 0.10, 0.05, -0.10])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def row_targets() -> dict[str, np.ndarray]:
    """The target distribution of the row over its candidates, for each option (the formulas of
    the recipes page, in NumPy)."""
    k = len(TEACHER_COSINES)
    one_hot = np.eye(k)[0]
    return {
        "one-hot (default)": one_hot,
        "label_smoothing=0.1": 0.9 * one_hot + 0.1 / k,
        "teacher, teacher_temperature=0.05": softmax(TEACHER_COSINES / 0.05),
        "teacher, teacher_temperature=0.2": softmax(TEACHER_COSINES / 0.2),
    }


def hardness_weights(logits: np.ndarray, beta: float) -> np.ndarray:
    """HCL's weights of a row's negatives: w_j = Q softmax_j(beta z_j), mean 1."""
    return len(logits) * softmax(beta * logits)


def targets(out: Path) -> None:
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 4), layout="constrained", width_ratios=[3, 2]
    )
    series = row_targets()
    k = len(TEACHER_COSINES)
    width = 0.8 / len(series)
    colors = [POSITIVE, "#81b29a", "#3d5a80", "#98c1d9"]
    for n, ((name, target), color) in enumerate(zip(series.items(), colors, strict=True)):
        left.bar(np.arange(k) + (n - 1.5) * width, target, width, label=name, color=color)
    left.set_xticks(np.arange(k), [f"$k_{j}$" for j in range(1, k + 1)])
    left.set_ylabel("target probability $y_{ic}$")
    left.set_ylim(0, 1.05)
    left.set_title("One row's target over its 8 candidates", fontsize=11)
    cosines = ", ".join(f"{c:g}" for c in TEACHER_COSINES)
    left.set_xlabel(
        f"$k_1$: the positive, $k_2$: a near-duplicate of it; teacher cosines {cosines}",
        fontsize=9,
    )
    left.legend(frameon=False, fontsize=9)
    for side in ("top", "right"):
        left.spines[side].set_visible(False)

    t = 0.2
    logits = np.linspace(-0.3, 0.5, 12) / t  # the row's Q = 12 negatives, cosines -0.3 ... 0.5
    for beta, color in zip((0.0, 1.0, 2.0), (IGNORED, "#e07a5f", "#9b2226"), strict=True):
        right.plot(
            logits,
            hardness_weights(logits, beta),
            "o-",
            color=color,
            markersize=4,
            label=f"hardness_beta={beta:g}",
        )
    right.set_yscale("log")
    right.set_xlabel(f"negative's logit $z_{{ij}} = s_{{ij}}/t$ (t = {t:g}, Q = 12)")
    right.set_ylabel("weight $w_j$ (mean 1)")
    right.set_title("HCL weights $w_j = Q\\,\\mathrm{softmax}_j(\\beta z_{ij})$", fontsize=11)
    right.legend(frameon=False, fontsize=9)
    for side in ("top", "right"):
        right.spines[side].set_visible(False)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def sigmoid_panel(ax: plt.Axes, loss: str, title: str, subtitle: str) -> None:
    """One N x N grid of query i against key j: InfoNCE's rows (one softmax each, framed) or
    the sigmoid loss's cells (each its own binary term, signed +1 or -1)."""
    for i in range(N):
        for j in range(N):
            positive = i == j or (loss == "labels" and CLASSES[i] == CLASSES[j])
            color = (SUPCON if i != j else POSITIVE) if positive else NEGATIVE
            sign = "$+1$" if positive else "$-1$"
            text = f"$k_{j + 1}$" if loss == "infonce" else sign
            ax.add_patch(plt.Rectangle((j, i), 0.94, 0.94, color=color, alpha=0.85))
            ax.text(j + 0.47, i + 0.47, text, ha="center", va="center", color="white", fontsize=12)
        if loss == "infonce":  # one softmax over the whole row
            ax.add_patch(
                plt.Rectangle(
                    (-0.06, i - 0.06), N + 0.06, 1.06, fill=False, edgecolor="black", linewidth=1.2
                )
            )
    ax.set_xlim(-0.15, N + 0.05)
    ax.set_ylim(N + 0.05, -0.15)
    ax.set_xticks([])
    labels = [
        f"$q_{i + 1}$ ({CLASSES[i]})" if loss == "labels" else f"$q_{i + 1}$" for i in range(N)
    ]
    ax.set_yticks([i + 0.47 for i in range(N)], labels)
    ax.tick_params(length=0, labelsize=11)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(subtitle, fontsize=9.5)


def sigmoid(out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.2), layout="constrained")
    sigmoid_panel(axes[0], "infonce", "InfoNCE: a softmax per row", "target: the diagonal")
    sigmoid_panel(axes[1], "siglip", "sigmoid loss: a term per cell", "+1 on the diagonal")
    sigmoid_panel(axes[2], "labels", f"sigmoid loss, labels={CLASSES}", "+1 for the same label")
    fig.legend(
        handles=[
            Patch(facecolor="white", edgecolor="black", label="one softmax (InfoNCE)"),
            Patch(color=POSITIVE, label="positive"),
            Patch(color=SUPCON, label="same label: positive"),
            Patch(color=NEGATIVE, label="negative"),
        ],
        loc="outside lower center",
        ncol=4,
        frameon=False,
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


W = 4  # workers in the ring figure
STEPS = ["#3d5a80", "#98c1d9", "#e9c46a", "#6d597a"]  # the shift at which a key block is met


def ring(out: Path) -> None:
    """Left: the workers on a ring, each holding its queries and, at shift s, the key block of
    worker r - s. Right: which key block each worker meets at which shift."""
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(10, 4.4), layout="constrained", width_ratios=[1, 1]
    )
    angles = np.pi / 2 - 2 * np.pi * np.arange(W) / W  # worker 0 on top, clockwise
    xy = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    for r in range(W):
        x, y = xy[r]
        left.add_patch(plt.Circle((x, y), 0.3, color="#f2f2f2", ec="black", linewidth=1))
        left.text(x, y + 0.08, f"worker {r}", ha="center", va="center", fontsize=10)
        left.text(x, y - 0.1, f"$Q_{r}$, $K_{r}$", ha="center", va="center", fontsize=11)
        a, b = xy[r], xy[(r + 1) % W]  # the key block goes from r to r + 1
        start, end = (
            a + 0.38 * (b - a) / np.linalg.norm(b - a),
            b - 0.38 * (b - a) / np.linalg.norm(b - a),
        )
        left.annotate(
            "",
            xy=end,
            xytext=start,
            arrowprops={"arrowstyle": "-|>", "color": "black", "connectionstyle": "arc3,rad=-0.25"},
        )
    left.text(
        0, 0, "keys move on;\ngradients come\nback with them", ha="center", va="center", fontsize=9
    )
    left.set_xlim(-1.45, 1.45)
    left.set_ylim(-1.45, 1.45)
    left.set_aspect("equal")
    left.axis("off")
    left.set_title(f"{W} workers, {W - 1} shifts", fontsize=11)

    for r in range(W):
        for c in range(W):
            s = (r - c) % W  # worker r holds key block c after s shifts
            right.add_patch(plt.Rectangle((c, r), 0.94, 0.94, color=STEPS[s], alpha=0.9))
            right.text(
                c + 0.47, r + 0.47, f"{s}", ha="center", va="center", color="white", fontsize=12
            )
    right.set_xlim(-0.1, W)
    right.set_ylim(W, -0.1)
    right.set_xticks([c + 0.47 for c in range(W)], [f"$K_{c}$" for c in range(W)])
    right.set_yticks([r + 0.47 for r in range(W)], [f"$Q_{r}$" for r in range(W)])
    right.tick_params(length=0, labelsize=11)
    for side in right.spines.values():
        side.set_visible(False)
    right.set_aspect("equal")
    right.set_title("the shift at which $Q_r$ meets $K_c$", fontsize=11)
    fig.legend(
        handles=[
            Patch(color=color, label="own block" if s == 0 else f"shift {s}")
            for s, color in enumerate(STEPS)
        ],
        loc="outside lower center",
        ncol=W,
        frameon=False,
    )
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "negatives.png"))
    recipes(Path(sys.argv[2] if len(sys.argv) > 2 else "recipes.png"))
    targets(Path(sys.argv[3] if len(sys.argv) > 3 else "targets.png"))
    sigmoid(Path(sys.argv[4] if len(sys.argv) > 4 else "sigmoid.png"))
    ring(Path(sys.argv[5] if len(sys.argv) > 5 else "ring.png"))
