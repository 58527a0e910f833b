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

With ``--micro-batch N`` each step encodes the batch N images at a time through
``infonce_xp.jax.grad_cache`` (a ``lax.scan`` over micro-batches): the same gradients, with the
encoder's residuals held for N images instead of the whole batch.

Run:  python examples/train_jax.py [--epochs 100] [--micro-batch 64] [--plot loss.png]
Needs: jax, optax, scikit-learn, infonce_xp (and matplotlib for --plot); ``_digits.py`` beside
it.
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial

import _digits  # beside this file: data, command line, 5-NN scores, summary
import jax
import jax.numpy as jnp
import numpy as np
import optax

from infonce_xp import info_nce
from infonce_xp.jax import grad_cache

MIN_TEMPERATURE = 0.01  # as infonce_xp.torch.InfoNCE(learn_temperature=True): logit scale <= 100


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


def views_of(key: jax.Array, batch: jax.Array, args: argparse.Namespace) -> tuple[jax.Array, ...]:
    k_query, k_positive = jax.random.split(key)
    return tuple(augment(k, batch, args.mask, args.noise) for k in (k_query, k_positive))


def encode_views(params: dict, views: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    return tuple(project(params, v) for v in views)  # query, positive key


def contrastive(params: dict, query: jax.Array, positive: jax.Array, fixed: float) -> jax.Array:
    return info_nce(query, positive, temperature=temperature_of(params, fixed), symmetric=True)


def loss_fn(params: dict, key: jax.Array, batch: jax.Array, args: argparse.Namespace) -> jax.Array:
    query, positive = encode_views(params, views_of(key, batch, args))
    return contrastive(params, query, positive, args.temperature)


def cached_loss_and_grad(
    params: dict, key: jax.Array, batch: jax.Array, args: argparse.Namespace
) -> tuple[jax.Array, dict]:
    """``jax.value_and_grad(loss_fn)`` through ``grad_cache``, ``args.micro_batch`` rows at a time.

    The whole tree goes to the encoder and to the loss (for a learned temperature); each part
    gets zeros for what it does not use, so the sum is the full gradient.
    """
    loss, (grads, loss_grads) = grad_cache(
        encode_views,
        params,
        views_of(key, batch, args),
        partial(contrastive, fixed=args.temperature),
        args.micro_batch,
        loss_params=params,
    )
    return loss, jax.tree_util.tree_map(jnp.add, grads, loss_grads)


def move(images: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """``shift`` on NumPy arrays, for the evaluation in ``_digits``."""
    return np.asarray(shift(jnp.asarray(images), jnp.asarray(dy), jnp.asarray(dx)))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, evaluate, print a summary; return the accuracies, final loss and timings."""
    parser = _digits.parser(__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = _digits.load_data(args.seed)
    x_train, _, y_train, y_test = data
    train = jnp.asarray(x_train)
    steps_per_epoch = _digits.steps_per_epoch(parser, args, len(train))
    key, init_key = jax.random.split(jax.random.key(args.seed))
    params = init_params(init_key)
    if args.learn_temperature:
        params["log_inverse_temperature"] = jnp.asarray(
            math.log(1.0 / args.temperature), jnp.float32
        )
    embed = jax.jit(encode)
    tests, results = _digits.baselines(data, args.seed, move, lambda x: embed(params, x))

    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(params)

    @partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params: dict, opt_state: optax.OptState, key: jax.Array, batch: jax.Array):
        if args.micro_batch:
            loss, grads = cached_loss_and_grad(params, key, batch, args)
        else:
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
    results |= _digits.scores("learned", embed(params, x_train), y_train, embedded, y_test)
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
    title = "JAX + optax: InfoNCE on digits"
    _digits.report(results, losses, steps_per_epoch, args, title, "tab:orange")
    return results


if __name__ == "__main__":
    main()
