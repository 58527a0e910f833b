"""Train a small encoder with InfoNCE on scikit-learn's digits, in JAX with optax.

The same experiment as ``train_torch.py``, written in plain JAX: each 8x8 digit is augmented
twice inside the jitted training step (a random shift of up to one pixel, Gaussian noise and,
with ``--mask``, random pixel masking); the two views are the query and its positive key, and
the other images of the batch are the negatives. ``infonce_xp.info_nce`` takes the JAX arrays
directly, and ``jax.grad`` differentiates through it. No labels are used for training. The
learned embeddings are then scored by a 5-nearest-neighbour classifier (cosine distance) fitted
on the training split, on the test images as they are and moved by one pixel, and compared with
the same classifier on raw pixels (also with 8 shifted copies of each training image added) and
on an untrained encoder.

Run:  python examples/train_jax.py [--epochs 100] [--plot loss.png]
Needs: jax, optax, scikit-learn, infonce_xp (and matplotlib for --plot).
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

from infonce_xp import info_nce

MIN_TEMPERATURE = 0.01  # as infonce_xp.torch.InfoNCE(learn_temperature=True): logit scale <= 100


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1] as (N, 8, 8) float32, split 70/30 (stratified)."""
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32).reshape(-1, 8, 8)
    return train_test_split(images, labels, test_size=0.3, random_state=seed, stratify=labels)


def shift(images: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
    """Move each image by (dy[i], dx[i]) pixels, each in {-1, 0, 1}, filling with zeros."""
    n = images.shape[0]
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1)))
    rows = (1 - dy)[:, None] + jnp.arange(8)  # (N, 8) source rows in the padded image
    cols = (1 - dx)[:, None] + jnp.arange(8)
    return padded[jnp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def augment(key: jax.Array, images: jax.Array, mask: float, noise: float) -> jax.Array:
    """A random view of each image: shift by up to a pixel, drop pixels, add noise."""
    k_shift, k_mask, k_noise = jax.random.split(key, 3)
    dy, dx = jax.random.randint(k_shift, (2, images.shape[0]), -1, 2)
    views = shift(images, dy, dx)
    keep = jax.random.uniform(k_mask, views.shape) >= mask
    return views * keep + noise * jax.random.normal(k_noise, views.shape)


def init_params(key: jax.Array, width: int = 16, dim: int = 128, proj: int = 64) -> dict:
    """Encoder (two 3x3 convolutions, 2x2 max-pool, linear) and projection head, torch's init."""

    def uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

    keys = jax.random.split(key, 8)
    flat = 2 * width * 4 * 4
    return {
        "conv1": (uniform(keys[0], (width, 1, 3, 3), 9), uniform(keys[1], (width,), 9)),
        "conv2": (
            uniform(keys[2], (2 * width, width, 3, 3), 9 * width),
            uniform(keys[3], (2 * width,), 9 * width),
        ),
        "dense": (uniform(keys[4], (flat, dim), flat), uniform(keys[5], (dim,), flat)),
        "head": (uniform(keys[6], (dim, proj), dim), uniform(keys[7], (proj,), dim)),
    }


def conv(x: jax.Array, weight_bias: tuple[jax.Array, jax.Array]) -> jax.Array:
    weight, bias = weight_bias
    out = jax.lax.conv_general_dilated(
        x, weight, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return out + bias[:, None, None]


def encode(params: dict, images: jax.Array) -> jax.Array:
    """8x8 images (N, 8, 8) -> embeddings (N, dim)."""
    x = jax.nn.relu(conv(images[:, None], params["conv1"]))
    x = jax.nn.relu(conv(x, params["conv2"]))
    n, c = x.shape[:2]
    x = x.reshape(n, c, 4, 2, 4, 2).max(axis=(3, 5)).reshape(n, -1)  # 2x2 max-pool, flatten
    weight, bias = params["dense"]
    return x @ weight + bias


def project(params: dict, images: jax.Array) -> jax.Array:
    """Encoder followed by the projection head (dropped after training)."""
    weight, bias = params["head"]
    return jax.nn.relu(encode(params, images)) @ weight + bias


def temperature_of(params: dict, fixed: float) -> jax.Array | float:
    if "log_inverse_temperature" not in params:
        return fixed
    bound = math.log(1.0 / MIN_TEMPERATURE)
    return jnp.exp(-jnp.minimum(params["log_inverse_temperature"], bound))


def loss_fn(params: dict, key: jax.Array, batch: jax.Array, args: argparse.Namespace) -> jax.Array:
    k_query, k_positive = jax.random.split(key)
    query = project(params, augment(k_query, batch, args.mask, args.noise))
    positive = project(params, augment(k_positive, batch, args.mask, args.noise))
    return info_nce(
        query, positive, temperature=temperature_of(params, args.temperature), symmetric=True
    )


def knn_accuracy(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray
) -> float:
    """Accuracy of a 5-nearest-neighbour classifier with cosine distance."""
    flat = lambda a: np.asarray(a).reshape(len(a), -1)  # noqa: E731
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(flat(train), y_train)
    return float(knn.score(flat(test), y_test))


def shifted_copy(images: np.ndarray, seed: int) -> np.ndarray:
    """Every image moved one pixel in one of the 8 directions (a fixed, seeded choice)."""
    moves = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)])
    pick = moves[np.random.default_rng(seed).integers(0, 8, len(images))]
    return np.asarray(shift(jnp.asarray(images), jnp.asarray(pick[:, 0]), jnp.asarray(pick[:, 1])))


def with_shifted_copies(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image in all 9 positions (moved by -1, 0 or 1 pixel each way), labels repeated."""
    n, images = len(images), jnp.asarray(images)
    moved = [
        np.asarray(shift(images, jnp.full(n, dy), jnp.full(n, dx)))
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
    ax.plot(steps, losses, color="tab:orange", alpha=0.35, lw=0.8, label="per step")
    ax.plot(
        (np.arange(epochs) + 1) * steps_per_epoch,
        per_epoch,
        color="tab:orange",
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
    parser.add_argument("--plot", metavar="PATH", help="save the loss curve as a PNG here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    x_train, x_test, y_train, y_test = load_data(args.seed)
    train = jnp.asarray(x_train)
    steps_per_epoch = len(train) // args.batch_size  # the last, partial batch is dropped
    if args.epochs < 1 or steps_per_epoch < 1:
        parser.error(f"need --epochs >= 1 and --batch-size <= {len(train)} (the training images)")
    key, init_key = jax.random.split(jax.random.key(args.seed))
    params = init_params(init_key)
    if args.learn_temperature:
        params["log_inverse_temperature"] = jnp.asarray(
            math.log(1.0 / args.temperature), jnp.float32
        )
    embed = jax.jit(encode)
    tests = (x_test, shifted_copy(x_test, args.seed + 1))  # as they are, moved by one pixel
    results = scores("raw", x_train, y_train, tests, y_test)
    results |= scores("raw_copies", *with_shifted_copies(x_train, y_train), tests, y_test)
    embedded = tuple(embed(params, x) for x in tests)
    results |= scores("untrained", embed(params, x_train), y_train, embedded, y_test)

    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(params)

    @partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params: dict, opt_state: optax.OptState, key: jax.Array, batch: jax.Array):
        loss, grads = jax.value_and_grad(loss_fn)(params, key, batch, args)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    losses = []
    for _ in range(args.epochs):
        key, perm_key = jax.random.split(key)
        order = jax.random.permutation(perm_key, len(train))
        for step in range(steps_per_epoch):
            key, step_key = jax.random.split(key)
            batch = train[order[step * args.batch_size : (step + 1) * args.batch_size]]
            params, opt_state, loss = train_step(params, opt_state, step_key, batch)
            losses.append(loss)
    losses = [float(loss) for loss in losses]  # one device->host sync, at the end
    train_time = time.perf_counter() - start

    embedded = tuple(embed(params, x) for x in tests)
    results |= scores("learned", embed(params, x_train), y_train, embedded, y_test)
    results |= {
        "final_loss": float(np.mean(losses[-steps_per_epoch:])),
        "temperature": float(temperature_of(params, args.temperature)),
        "train_seconds": train_time,
        "total_seconds": time.perf_counter() - started,
    }
    print(
        f"JAX {jax.__version__} ({jax.default_backend()}): {args.epochs} epochs, "
        f"{len(losses)} steps of batch {args.batch_size} in {train_time:.1f} s (compilation "
        "included); final loss "
        f"{results['final_loss']:.3f} (chance {math.log(args.batch_size):.3f}), "
        f"temperature {results['temperature']:.3f}"
    )
    print(f"{'5-NN accuracy (cosine distance)':<31} {'test':>6}   test moved by one pixel")
    for key, label in ROWS.items():
        print(f"  {label:<29} {results[key]:.4f}   {results[key + '_moved']:.4f}")
    if args.plot:
        title = f"JAX + optax: InfoNCE on digits ({args.epochs} epochs)"
        plot_loss(losses, steps_per_epoch, math.log(args.batch_size), args.plot, title)
        print(f"loss curve saved to {args.plot}")
    return results


if __name__ == "__main__":
    main()
