"""The loss graph of the ``info-nce-pytorch`` README, recomputed with ``infonce_xp`` on NumPy.

Queries are drawn from N(mu_q, Sigma), positives from N(alpha mu_q + (1 - alpha) mu_p, Sigma)
and negatives from N(beta mu_q + (1 - beta) mu_n, Sigma), with Sigma = I/10. As alpha grows the
positives move onto the queries (lower loss); as beta grows so do the negatives (higher loss).

Run by ``conf.py`` at build time; ``python docs/loss_graph.py OUT.png`` draws it by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from infonce_xp import info_nce

N, M, D = 16, 8, 64  # queries, negatives, features: the seed's script
STEPS, REPEATS = 21, 4  # grid points per axis; batches averaged per point
SIGMA = np.sqrt(0.1)  # standard deviation: Sigma = I/10


def losses(paired: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean loss over a (STEPS, STEPS) grid of alpha and beta."""
    rng = np.random.default_rng(seed)
    mu_q, mu_p, mu_n = rng.uniform(size=(3, D))
    alphas = betas = np.linspace(0.0, 1.0, STEPS)
    negatives_shape = (N, M, D) if paired else (M, D)
    out = np.empty((STEPS, STEPS))
    for a, alpha in enumerate(alphas):
        for b, beta in enumerate(betas):
            total = 0.0
            for _ in range(REPEATS):
                query = rng.normal(mu_q, SIGMA, size=(N, D))
                positive_key = rng.normal(alpha * mu_q + (1 - alpha) * mu_p, SIGMA, size=(N, D))
                negatives = rng.normal(beta * mu_q + (1 - beta) * mu_n, SIGMA, size=negatives_shape)
                mode = "paired" if paired else "unpaired"
                total += float(info_nce(query, positive_key, negatives, negative_mode=mode))
            out[a, b] = total / REPEATS
    alpha_grid, beta_grid = np.meshgrid(alphas, betas, indexing="ij")
    return alpha_grid, beta_grid, out


def main(out: Path) -> None:
    fig = plt.figure(figsize=(10, 4.6), layout="constrained")
    for column, paired in enumerate((False, True)):
        alpha, beta, loss = losses(paired)
        ax = fig.add_subplot(1, 2, column + 1, projection="3d")
        ax.plot_surface(alpha, beta, loss, cmap="viridis", linewidth=0, antialiased=True)
        ax.view_init(azim=-70, elev=30)
        ax.set_box_aspect(None, zoom=0.88)
        ax.set_xlabel(r"$\alpha$")
        ax.set_ylabel(r"$\beta$")
        ax.set_zlabel("loss", labelpad=10)
        ax.set_title(f'negative_mode="{"paired" if paired else "unpaired"}"')
    fig.savefig(out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "loss_graph.png"))
