"""Train a small encoder with InfoNCE on scikit-learn's digits, in PyTorch.

Each 8x8 digit is augmented twice (a random shift of up to one pixel, Gaussian noise and, with
``--mask``, random pixel masking); the two views are the query and its positive key, and the
other images of the batch are the negatives. No labels are used for training. The learned
embeddings are then scored by a 5-nearest-neighbour classifier (cosine distance) fitted on the
training split, on the test images as they are and moved by one pixel, and compared with the
same classifier on raw pixels (also with 8 shifted copies of each training image added) and on
an untrained encoder.

With ``--micro-batch N`` each step encodes the batch N images at a time through
``infonce_xp.torch.grad_cache``: the same gradients, with the encoder's activations held for N
images instead of the whole batch.

Run:  python examples/train_torch.py [--epochs 100] [--micro-batch 64] [--plot loss.png]
Needs: torch, scikit-learn, infonce_xp (and matplotlib for --plot); ``_digits.py`` beside it.
"""

from __future__ import annotations

import argparse
import math
import time

import _digits  # beside this file: data, command line, 5-NN scores, summary
import numpy as np
import torch
from torch import nn

from infonce_xp.torch import InfoNCE, grad_cache


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


def move(images: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """``shift`` on NumPy arrays, for the evaluation in ``_digits``."""
    return shift(torch.from_numpy(images), torch.from_numpy(dy), torch.from_numpy(dx)).numpy()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, evaluate, print a summary; return the accuracies, final loss and timings."""
    parser = _digits.parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (tiny matrices: 1 is fastest)"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    data = _digits.load_data(args.seed)
    x_train, _, y_train, y_test = data
    train = torch.from_numpy(x_train)
    steps_per_epoch = _digits.steps_per_epoch(parser, args, len(train))

    encoder = Encoder()
    head = nn.Sequential(nn.ReLU(), nn.Linear(128, 64))  # projection head, dropped after training
    loss_fn = InfoNCE(
        temperature=args.temperature, symmetric=True, learn_temperature=args.learn_temperature
    )
    tests, results = _digits.baselines(data, args.seed, move, lambda x: embed(encoder, x))

    def encode(views: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return head(encoder(views[0])), head(encoder(views[1]))  # query, positive key

    parameters = [*encoder.parameters(), *head.parameters(), *loss_fn.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=args.lr)

    start = time.perf_counter()
    losses: list[float] = []
    for _ in range(args.epochs):
        order = torch.randperm(len(train), generator=generator)
        for step in range(steps_per_epoch):
            batch = train[order[step * args.batch_size : (step + 1) * args.batch_size]]
            views = (augment(batch, generator, args), augment(batch, generator, args))
            optimizer.zero_grad()
            if args.micro_batch:  # the views are drawn before: grad_cache encodes them twice
                loss = grad_cache(encode, views, loss_fn, args.micro_batch)
            else:
                loss = loss_fn(*encode(views))
                loss.backward()
            optimizer.step()
            losses.append(loss.item())
    train_time = time.perf_counter() - start

    embedded = tuple(embed(encoder, x) for x in tests)
    results |= _digits.scores("learned", embed(encoder, x_train), y_train, embedded, y_test)
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
    _digits.report(results, losses, steps_per_epoch, args, "PyTorch: InfoNCE on digits", "tab:blue")
    return results


if __name__ == "__main__":
    main()
