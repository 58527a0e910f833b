"""chunk_size: the streamed forward and backward equal the all-at-once path on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from infonce_xp import info_nce, info_nce_value_and_grad

CASES = [
    ("in-batch", {}),
    ("symmetric", {"symmetric": True}),
    ("unpaired", {}),
    ("paired", {"negative_mode": "paired"}),
    ("unnormalised", {"normalize": False}),
]


def _problem(mode, n=11, m=7, d=5, seed=0):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, n, d))
    neg = {"unpaired": rng.normal(size=(m, d)), "paired": rng.normal(size=(n, m, d))}.get(mode)
    return q, k, neg


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 11, 64])
@pytest.mark.parametrize("name, options", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiled_equals_untiled(backend, chunk_size, name, options, dtype):
    q, k, neg = _problem(name)
    args = backend.asarrays(q, k, neg, dtype=dtype)
    t = backend.asarray(np.asarray(0.2, dtype=dtype))
    go = backend.asarray(np.random.default_rng(1).normal(size=len(q)).astype(dtype))
    common = {"temperature": t, "reduction": "none", "grad_output": go, **options}
    loss, grads = info_nce_value_and_grad(*args, **common)
    tiled_loss, tiled_grads = info_nce_value_and_grad(*args, chunk_size=chunk_size, **common)
    rtol, atol = (1e-5, 1e-6) if dtype == "float32" else (1e-12, 1e-13)
    backend.assert_close(tiled_loss, loss, rtol=rtol, atol=atol)
    for a, b in zip(tiled_grads, grads):
        if b is not None:
            backend.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_tiled_reductions(backend, reduction):
    q, k, neg = _problem("unpaired", n=9, m=13)
    args = backend.asarrays(q, k, neg)
    backend.assert_close(
        info_nce(*args, reduction=reduction, chunk_size=4),
        info_nce(*args, reduction=reduction),
        rtol=1e-12,
    )


@pytest.mark.backends("torch")
def test_torch_tiled_autograd_matches_untiled():
    import torch

    from infonce_xp.torch import InfoNCE

    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 37, 16, generator=gen, dtype=torch.float64)
    results = []
    for chunk_size in (None, 8):
        loss_fn = InfoNCE(learn_temperature=True, symmetric=True, chunk_size=chunk_size).double()
        leaves = [q.clone().requires_grad_(), k.clone().requires_grad_()]
        loss = loss_fn(*leaves)
        loss.backward()
        results.append((loss, leaves[0].grad, leaves[1].grad, loss_fn.log_inverse_temperature.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.backends("jax")
def test_jax_trace_does_not_grow_with_the_number_of_tiles():
    import jax
    import jax.numpy as jnp

    def size(n):
        q = jnp.ones((n, 8), dtype=jnp.float32)
        f = jax.grad(lambda q: info_nce(q, q * 2, chunk_size=4, symmetric=True))
        eqns = jax.make_jaxpr(f)(q).jaxpr.eqns
        assert any(e.primitive.name == "scan" for e in eqns)
        return len(eqns)

    assert size(16) == size(1024)  # 4 tiles or 256 tiles: one lax.scan body either way
