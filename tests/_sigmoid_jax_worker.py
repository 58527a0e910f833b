"""Worker of ``test_sigmoid_distributed.py``: ``sigmoid_loss`` under ``jax.shard_map`` on
WORLD virtual CPU devices, with each exchange, tiled or not, against the same loss on the
concatenated batch in one device. Not a test module; run in a subprocess, because ``XLA_FLAGS``
must be set before JAX is imported::

    python _sigmoid_jax_worker.py WORLD OUT.json

Writes, per case, the largest difference of the summed loss and of each gradient (query, key,
temperature, bias), and whether the jitted program holds an all-gather and a ppermute.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def main(world: int, out: str) -> None:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={world}"
    import jax
    import numpy as np
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    jax.config.update("jax_enable_x64", True)
    from infonce_xp import sigmoid_loss
    from infonce_xp.jax import all_gather

    mesh = Mesh(np.asarray(jax.devices()[:world]), ("b",))
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 4 * world, 6))
    labels = rng.integers(0, 5, 4 * world)
    args = tuple(map(jax.numpy.asarray, (q, k, 0.3, -2.0, labels)))

    def whole(q: Any, k: Any, t: Any, b: Any, y: Any) -> Any:
        return sigmoid_loss(q, k, t, b, labels=y, reduction="sum")

    want = jax.value_and_grad(whole, argnums=(0, 1, 2, 3))(*args)
    report: dict[str, Any] = {}
    for exchange in ("gather", "ring"):
        for chunk in (None, 3):

            def local(
                q: Any, k: Any, t: Any, b: Any, y: Any, exchange=exchange, chunk=chunk
            ) -> Any:
                loss = sigmoid_loss(
                    q,
                    k,
                    t,
                    b,
                    labels=y,
                    reduction="sum",
                    gather=all_gather("b"),
                    exchange=exchange,
                    chunk_size=chunk,
                )
                return jax.lax.psum(loss, "b")

            specs = (P("b"), P("b"), P(), P(), P("b"))
            f = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())
            step = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
            got = step(*args)
            program = str(jax.make_jaxpr(step)(*args))
            report[f"{exchange}, {chunk}"] = {
                "loss": abs(float(got[0]) - float(want[0])),
                **{
                    name: float(np.abs(np.asarray(a) - np.asarray(b)).max())
                    for name, a, b in zip(("query", "key", "t", "bias"), got[1], want[1])
                },
                "all_gather": "all_gather" in program,
                "ppermute": "ppermute" in program,
            }
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
