"""What ``train_torch.py`` and ``train_jax.py`` share: the data, the command line, the 5-NN
scores and the summary. NumPy, scikit-learn and (for ``--plot``) matplotlib only; each script
brings its framework's encoder, augmentation and training loop.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

# Moves images (N, 8, 8) by (dy[i], dx[i]) pixels, each in {-1, 0, 1}: NumPy in, NumPy out.
Move = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

ROWS = {
    "raw": "raw pixels",
    "raw_copies": "raw pixels + 8 shifted copies",
    "untrained": "untrained encoder",
    "learned": "learned embedding",
}


def parser(description: str) -> argparse.ArgumentParser:
    """The options of both scripts (a script may add its own)."""
    out = argparse.ArgumentParser(description=description)
    out.add_argument("--epochs", type=int, default=100, help="passes over the training split")
    out.add_argument("--batch-size", type=int, default=256)
    out.add_argument("--lr", type=float, default=3e-3)
    out.add_argument("--temperature", type=float, default=0.1, help="initial, if learned")
    out.add_argument("--learn-temperature", action="store_true", help="learn it, as CLIP does")
    out.add_argument("--mask", type=float, default=0.0, help="fraction of pixels dropped (masking)")
    out.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian noise")
    out.add_argument("--seed", type=int, default=0)
    out.add_argument(
        "--micro-batch",
        type=int,
        metavar="N",
        help="encode N images at a time with grad_cache (same gradients, less memory)",
    )
    out.add_argument("--plot", metavar="PATH", help="save the loss curve as a PNG here")
    return out


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1] as (N, 8, 8) float32, split 70/30 (stratified)."""
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32).reshape(-1, 8, 8)
    return train_test_split(images, labels, test_size=0.3, random_state=seed, stratify=labels)


def steps_per_epoch(cli: argparse.ArgumentParser, args: argparse.Namespace, n: int) -> int:
    """Full batches per epoch (the last, partial batch is dropped); an error if there are none."""
    steps = n // args.batch_size
    if args.epochs < 1 or steps < 1:
        cli.error(f"need --epochs >= 1 and --batch-size <= {n} (the training images)")
    if args.micro_batch is not None and args.micro_batch < 1:
        cli.error(f"--micro-batch must be a positive int; got {args.micro_batch}")
    return steps


def knn_accuracy(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray
) -> float:
    """Accuracy of a 5-nearest-neighbour classifier with cosine distance."""
    flat = lambda a: np.asarray(a).reshape(len(a), -1)  # noqa: E731
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(flat(train), y_train)
    return float(knn.score(flat(test), y_test))


def shifted_copy(images: np.ndarray, seed: int, move: Move) -> np.ndarray:
    """Every image moved one pixel in one of the 8 directions (a fixed, seeded choice)."""
    moves = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)])
    pick = moves[np.random.default_rng(seed).integers(0, 8, len(images))]
    return move(images, pick[:, 0], pick[:, 1])


def with_shifted_copies(
    images: np.ndarray, labels: np.ndarray, move: Move
) -> tuple[np.ndarray, np.ndarray]:
    """Each image in all 9 positions (moved by -1, 0 or 1 pixel each way), labels repeated."""
    n = len(images)
    moved = [move(images, np.full(n, dy), np.full(n, dx)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.concatenate(moved), np.tile(labels, 9)


def scores(
    name: str,
    train: np.ndarray,
    y_train: np.ndarray,
    tests: tuple[np.ndarray, ...],
    y_test: np.ndarray,
) -> dict[str, float]:
    """5-NN accuracies on the test images as they are (``name``) and moved (``name_moved``)."""
    test, moved = tests
    return {
        name: knn_accuracy(train, y_train, test, y_test),
        f"{name}_moved": knn_accuracy(train, y_train, moved, y_test),
    }


def baselines(
    data: tuple[np.ndarray, ...], seed: int, move: Move, embed: Callable[[np.ndarray], np.ndarray]
) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, float]]:
    """The test images as they are and moved by one pixel, and the scores of raw pixels (also
    with shifted copies) and of the untrained encoder ``embed``."""
    x_train, x_test, y_train, y_test = data
    tests = (x_test, shifted_copy(x_test, seed + 1, move))
    results = scores("raw", x_train, y_train, tests, y_test)
    results |= scores("raw_copies", *with_shifted_copies(x_train, y_train, move), tests, y_test)
    embedded = tuple(embed(x) for x in tests)
    results |= scores("untrained", embed(x_train), y_train, embedded, y_test)
    return tests, results


def report(
    results: dict[str, float],
    losses: list[float],
    steps: int,
    args: argparse.Namespace,
    title: str,
    color: str,
) -> None:
    """Print the accuracies; with ``--plot``, save the loss curve."""
    print(f"{'5-NN accuracy (cosine distance)':<31} {'test':>6}   test moved by one pixel")
    for key, label in ROWS.items():
        print(f"  {label:<29} {results[key]:.4f}   {results[key + '_moved']:.4f}")
    if args.plot:
        chance = math.log(args.batch_size)
        plot_loss(losses, steps, chance, args.plot, f"{title} ({args.epochs} epochs)", color)
        print(f"loss curve saved to {args.plot}")


def plot_loss(
    losses: list[float], steps_per_epoch: int, chance: float, path: str, title: str, color: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(losses) + 1)
    epochs = len(losses) // steps_per_epoch
    per_epoch = np.reshape(losses[: epochs * steps_per_epoch], (epochs, steps_per_epoch)).mean(1)
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    ax.plot(steps, losses, color=color, alpha=0.35, lw=0.8, label="per step")
    ax.plot(
        (np.arange(epochs) + 1) * steps_per_epoch, per_epoch, color=color, lw=2, label="epoch mean"
    )
    ax.axhline(chance, color="gray", ls="--", lw=1, label=f"chance, log(batch) = {chance:.2f}")
    ax.set(xlabel="step", ylabel="InfoNCE loss", title=title, ylim=(0, 1.05 * chance))
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)
