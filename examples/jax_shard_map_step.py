"""Data-parallel contrastive training with JAX: ``jax.shard_map`` over 4 (virtual CPU) devices.

    python examples/jax_shard_map_step.py

The global batch of 32 samples is split over 4 devices; each device encodes its 8 samples and
scores its queries against the keys of all devices through ``gather=all_gather("batch")``. The
encoder weights and the (log inverse) temperature are replicated and trained by plain SGD.
"""

from __future__ import annotations

import os

# Four CPU devices for the demonstration; must be set before JAX is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from infonce_xp import info_nce
from infonce_xp.jax import all_gather

try:
    from jax import shard_map  # JAX >= 0.7
except ImportError:  # older JAX
    from jax.experimental.shard_map import shard_map

DEVICES, GLOBAL_BATCH, FEATURES, EMBEDDING, STEPS, LEARNING_RATE = 4, 32, 32, 16, 5, 0.05

mesh = Mesh(np.array(jax.devices()[:DEVICES]), ("batch",))


def encode(params: dict, x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ params["w1"]) @ params["w2"]


def contrastive_loss(
    params: dict, view1: jax.Array, view2: jax.Array, gather: object = None
) -> jax.Array:
    temperature = jnp.exp(-params["log_inverse_temperature"])
    return info_nce(
        encode(params, view1), encode(params, view2), temperature=temperature, gather=gather
    )


def batch_loss(params: dict, view1: jax.Array, view2: jax.Array) -> jax.Array:
    """Runs on each device with its 8 samples; returns the loss of the whole batch of 32."""
    # Gather: this device's queries are scored against the keys of all 4 devices (32 keys).
    local = contrastive_loss(params, view1, view2, gather=all_gather("batch"))
    # The mean over devices is the single-device loss on the whole batch, and its gradient is
    # the single-device gradient: no rescaling by the number of devices.
    return jax.lax.pmean(local, "batch")


@jax.jit
def train_step(params: dict, view1: jax.Array, view2: jax.Array) -> tuple[dict, jax.Array]:
    def step(params: dict, view1: jax.Array, view2: jax.Array) -> tuple[dict, jax.Array]:
        loss, grads = jax.value_and_grad(batch_loss)(params, view1, view2)
        # With shard_map's replication checks (the default), the gradients of the replicated
        # parameters come back already summed over devices: identical on every device.
        params = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)
        return params, loss

    return shard_map(
        step,
        mesh=mesh,
        in_specs=(P(), P("batch"), P("batch")),  # parameters replicated, samples split
        out_specs=(P(), P()),
    )(params, view1, view2)


def main() -> None:
    key = jax.random.key(0)
    k1, k2, k3, key = jax.random.split(key, 4)
    params = {
        "w1": jax.random.normal(k1, (FEATURES, 64)) / np.sqrt(FEATURES),
        "w2": jax.random.normal(k2, (64, EMBEDDING)) / 8.0,
        "log_inverse_temperature": jnp.log(1 / 0.1),
    }
    samples = jax.random.normal(k3, (GLOBAL_BATCH, FEATURES))
    for step in range(STEPS):
        k1, k2, key = jax.random.split(key, 3)
        view1 = samples + 0.3 * jax.random.normal(k1, samples.shape)
        view2 = samples + 0.3 * jax.random.normal(k2, samples.shape)
        params, loss = train_step(params, view1, view2)
        temperature = float(jnp.exp(-params["log_inverse_temperature"]))
        print(f"step {step}: loss {float(loss):.4f}, temperature {temperature:.4f}")

    # The same loss and gradients as on one device with the whole batch and no gather:
    sharded = jax.jit(
        shard_map(
            jax.value_and_grad(batch_loss),
            mesh=mesh,
            in_specs=(P(), P("batch"), P("batch")),
            out_specs=P(),
        )
    )(params, view1, view2)
    single = jax.value_and_grad(contrastive_loss)(params, view1, view2)
    print(
        f"loss on {DEVICES} devices {float(sharded[0]):.6f}, on one device {float(single[0]):.6f}"
    )
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


if __name__ == "__main__":
    main()
