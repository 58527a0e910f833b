"""Train a small encoder with InfoNCE on scikit-learn's digits, in PyTorch.

Each 8x8 digit is augmented twice (a random shift of up to one pixel, Gaussian noise and, with
``--mask``, random pixel masking); the two views are the query and its positive key, and the
other images of the batch are the negatives. No labels are used for training. The learned
embeddings are then scored by a 5-nearest-neighbour classifier (cosine distance) fitted on the
training split, on the test images as they are and moved by one pixel, and compared with the
same classifier on raw pixels (also with 8 shifted copies of each training image added) and on
an untrained encoder.

Run:  python examples/train_torch.py [--epochs 100] [--plot loss.png]
Needs: torch, scikit-learn, infonce_xp (and matplotlib for --plot).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from infonce_xp.torch import InfoNCE


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1] as (N, 8, 8) float32, split 70/30 (stratified)."""
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32).reshape(-1, 8, 8)
    return train_test_split(images, labels, test_size=0.3, random_state=seed, stratify=labels)


def shift(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Move each image by (dy[i], dx[i]) pixels, each in {-1, 0, 1}, filling with zeros."""
    n = images.shape[0]
    padded = nn.functional.pad(images, (1, 1, 1, 1))
    rows = (1 - dy)[:, None] + torch.arange(8)  # (N, 8) source rows in the padded image
    cols = (1 - dx)[:, None] + torch.arange(8)
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def augment(
    images: torch.Tensor, generator: torch.Generator, args: argparse.Namespace
) -> torch.Tensor:
    """A random view of each image: shift by up to a pixel, drop pixels, add noise."""
    n = images.shape[0]
    dy, dx = torch.randint(-1, 2, (2, n), generator=generator)
    views = shift(images, dy, dx)
    keep = torch.rand(views.shape, generator=generator) >= args.mask
    return views * keep + args.noise * torch.randn(views.shape, generator=generator)


class Encoder(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and a linear layer: 8x8 image -> embedding."""

    def __init__(self, width: int = 16, dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 4 * 4, dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images[:, None])


@torch.no_grad()
def embed(encoder: nn.Module, images: np.ndarray) -> np.ndarray:
    encoder.eval()
    out = encoder(torch.from_numpy(images)).numpy()
    encoder.train()
    return out


def knn_accuracy(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray
) -> float:
    """Accuracy of a 5-nearest-neighbour classifier with cosine distance."""
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(flat(train), y_train)
    return float(knn.score(flat(test), y_test))


def shifted_copy(images: np.ndarray, seed: int) -> np.ndarray:
    """Every image moved one pixel in one of the 8 directions (a fixed, seeded choice)."""
    moves = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)])
    pick = moves[np.random.default_rng(seed).integers(0, 8, len(images))]
    dy, dx = torch.from_numpy(pick).T
    return shift(torch.from_numpy(images), dy, dx).numpy()


def with_shifted_copies(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image in all 9 positions (moved by -1, 0 or 1 pixel each way), labels repeated."""
    n, images = len(images), torch.from_numpy(images)
    moved = [
        shift(images, torch.full((n,), dy), torch.full((n,), dx)).numpy()
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    ]
    return np.concatenate(moved), np.tile(labels, 9)


ROWS = {
    "raw": "raw pixels",
    "raw_copies": "raw pixels + 8 shifted copies",
    "untrained": "untrained encoder",
    "learned": "learned embedding",
}


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


def plot_loss(
    losses: list[float], steps_per_epoch: int, chance: float, path: str, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(losses) + 1)
    epochs = len(losses) // steps_per_epoch
    per_epoch = np.reshape(losses[: epochs * steps_per_epoch], (epochs, steps_per_epoch)).mean(1)
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, lw=0.8, label="per step")
    ax.plot(
        (np.arange(epochs) + 1) * steps_per_epoch,
        per_epoch,
        color="tab:blue",
        lw=2,
        label="epoch mean",
    )
    ax.axhline(chance, color="gray", ls="--", lw=1, label=f"chance, log(batch) = {chance:.2f}")
    ax.set(xlabel="step", ylabel="InfoNCE loss", title=title, ylim=(0, 1.05 * chance))
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, evaluate, print a summary; return the accuracies, final loss and timings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100, help="passes over the training split")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--temperature", type=float, default=0.1, help="initial, if learned")
    parser.add_argument("--learn-temperature", action="store_true", help="learn it, as CLIP does")
    parser.add_argument(
        "--mask", type=float, default=0.0, help="fraction of pixels dropped (masking)"
    )
    parser.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (tiny matrices: 1 is fastest)"
    )
    parser.add_argument("--plot", metavar="PATH", help="save the loss curve as a PNG here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    x_train, x_test, y_train, y_test = load_data(args.seed)
    train = torch.from_numpy(x_train)
    steps_per_epoch = len(train) // args.batch_size  # the last, partial batch is dropped
    if args.epochs < 1 or steps_per_epoch < 1:
        parser.error(f"need --epochs >= 1 and --batch-size <= {len(train)} (the training images)")

    encoder = Encoder()
    head = nn.Sequential(nn.ReLU(), nn.Linear(128, 64))  # projection head, dropped after training
    loss_fn = InfoNCE(
        temperature=args.temperature, symmetric=True, learn_temperature=args.learn_temperature
    )
    tests = (x_test, shifted_copy(x_test, args.seed + 1))  # as they are, moved by one pixel
    results = scores("raw", x_train, y_train, tests, y_test)
    results |= scores("raw_copies", *with_shifted_copies(x_train, y_train), tests, y_test)
    embedded = tuple(embed(encoder, x) for x in tests)
    results |= scores("untrained", embed(encoder, x_train), y_train, embedded, y_test)
    parameters = [*encoder.parameters(), *head.parameters(), *loss_fn.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=args.lr)

    start = time.perf_counter()
    losses: list[float] = []
    for _ in range(args.epochs):
        order = torch.randperm(len(train), generator=generator)
        for step in range(steps_per_epoch):
            batch = train[order[step * args.batch_size : (step + 1) * args.batch_size]]
            query = head(encoder(augment(batch, generator, args)))
            positive = head(encoder(augment(batch, generator, args)))
            loss = loss_fn(query, positive)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    train_time = time.perf_counter() - start

    embedded = tuple(embed(encoder, x) for x in tests)
    results |= scores("learned", embed(encoder, x_train), y_train, embedded, y_test)
    with torch.no_grad():
        temperature = float(loss_fn.temperature)
    results |= {
        "final_loss": float(np.mean(losses[-steps_per_epoch:])),
        "temperature": temperature,
        "train_seconds": train_time,
        "total_seconds": time.perf_counter() - started,
    }
    print(
        f"PyTorch {torch.__version__}: {args.epochs} epochs, {len(losses)} steps of batch "
        f"{args.batch_size} in {train_time:.1f} s; final loss {results['final_loss']:.3f} "
        f"(chance {math.log(args.batch_size):.3f}), temperature {results['temperature']:.3f}"
    )
    print(f"{'5-NN accuracy (cosine distance)':<31} {'test':>6}   test moved by one pixel")
    for key, label in ROWS.items():
        print(f"  {label:<29} {results[key]:.4f}   {results[key + '_moved']:.4f}")
    if args.plot:
        title = f"PyTorch: InfoNCE on digits ({args.epochs} epochs)"
        plot_loss(losses, steps_per_epoch, math.log(args.batch_size), args.plot, title)
        print(f"loss curve saved to {args.plot}")
    return results


if __name__ == "__main__":
    main()
