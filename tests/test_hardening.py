"""An adversarial user on every backend: huge rows, bad temperatures of every library, empty
negatives with tiles, and unclear arguments. No silent wrong number, no crash."""

from __future__ import annotations

import numpy as np
import pytest

from infonce_xp import InfoNCE, info_nce, info_nce_value_and_grad
from reference import reference_rows

rng = np.random.default_rng(11)
Q, K, NEG = rng.normal(size=(8, 16)), rng.normal(size=(8, 16)), rng.normal(size=(5, 16))


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize(
    "dtype, scale", [("float32", 2e19), ("float32", 1e20), ("float32", 1e37), ("float16", 2e4)]
)
@pytest.mark.parametrize("negatives", ["in-batch", "unpaired"])
def test_rows_of_any_magnitude_give_the_float64_loss(backend, chunk_size, dtype, scale, negatives):
    """Cosine similarity does not depend on scale: rows near the top of their dtype's range give
    the loss that float64 gives on the same (rounded) values."""
    q, k, neg = (np.clip(a, -3, 3) * scale for a in (Q, K, NEG))
    rounded = [a.astype(dtype) for a in (q, k, neg)]
    assert all(np.all(np.isfinite(a)) for a in rounded)
    neg_rounded = rounded[2] if negatives == "unpaired" else None
    arrays = [backend.asarray(a, dtype) for a in rounded[:2]]
    arrays.append(None if neg_rounded is None else backend.asarray(neg_rounded, dtype))
    got = backend.to_numpy(info_nce(*arrays, chunk_size=chunk_size, reduction="none"))
    exact = reference_rows(*rounded[:2], neg_rounded)
    np.testing.assert_allclose(
        got.astype(np.float64), exact, rtol=2e-3 if dtype == "float16" else 2e-5
    )


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf")])
def test_array_temperatures_of_every_library_are_range_checked(backend, bad):
    q, k = backend.asarray(Q), backend.asarray(K)
    t = backend.asarray(np.asarray(bad))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        InfoNCE(temperature=t)
    if backend.host_readable:  # elsewhere a call does not synchronise to read it
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            info_nce(q, k, temperature=t)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, k, temperature=np.float64(bad))


@pytest.mark.parametrize("bad", [np.float64(-1.0), 2**1100, -(2**1100), 0])
def test_python_and_numpy_numbers_are_range_checked(bad):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        InfoNCE(temperature=bad)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        info_nce(Q, K, temperature=bad)


@pytest.mark.parametrize("temperature", [np.float32(0.1), np.asarray(0.1), np.float64(0.1)])
def test_a_numpy_temperature_is_a_number_to_every_library(backend, temperature):
    q, k = backend.asarray(Q), backend.asarray(K)
    want = backend.to_numpy(info_nce(q, k, temperature=0.1))
    got = backend.to_numpy(info_nce(q, k, temperature=temperature))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(InfoNCE(temperature)(q, k)), want, rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("mode", ["unpaired", "paired"])
def test_empty_negatives_give_zero_losses_and_gradients(backend, chunk_size, mode):
    q, k = backend.asarray(Q), backend.asarray(K)
    neg = backend.asarray(np.zeros((0, 16)) if mode == "unpaired" else np.zeros((8, 0, 16)))
    loss, grads = info_nce_value_and_grad(
        q, k, neg, negative_mode=mode, chunk_size=chunk_size, reduction="none"
    )
    assert backend.to_numpy(loss).shape == (8,)
    np.testing.assert_array_equal(backend.to_numpy(loss), 0.0)
    for g in grads[:3]:
        np.testing.assert_array_equal(backend.to_numpy(g), 0.0)
    assert backend.to_numpy(grads.negative_keys).shape == tuple(neg.shape)


def test_chunk_size_takes_numpy_integers():
    got = info_nce(Q, K, chunk_size=np.int64(3))
    np.testing.assert_allclose(got, info_nce(Q, K), rtol=1e-12)
    assert InfoNCE(chunk_size=np.int32(3)).chunk_size == 3
    assert type(InfoNCE(chunk_size=np.int32(3)).chunk_size) is int


class Identity:
    """A one-worker gather, without ``scatter``."""

    def __call__(self, x):
        return x

    def rank(self):
        return 0


class Doubling(Identity):
    """A gather that returns the wrong number of rows (not whole copies)."""

    def __call__(self, x):
        return np.concatenate([x, x[:1]])

    def scatter(self, grad):
        return grad[:8]


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"grad_output": np.ones((), dtype=complex)}, TypeError, ["grad_output", "complex"]),
        ({"grad_output": np.ones(3)}, ValueError, ["grad_output", "shape ()", "(3,)"]),
        ({"grad_output": 1.0}, TypeError, ["grad_output", "float"]),
        ({"xp": "numpy"}, TypeError, ["xp", "namespace", "'numpy'"]),
        ({"gather": Identity()}, TypeError, ["gather", "scatter"]),
        ({"gather": Doubling()}, ValueError, ["gather", "axis 0", "(9, 16)"]),
    ],
)
def test_unclear_arguments_are_named(kwargs, error, words):
    with pytest.raises(error) as info:
        info_nce_value_and_grad(Q, K, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.backends("torch")
def test_grad_output_of_another_library_is_named():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"grad_output.*library.*torch"):
        info_nce_value_and_grad(Q, K, grad_output=torch.ones(()))


def test_unknown_keywords_are_named():
    with pytest.raises(TypeError, match=r"'symetric'.*symmetric"):
        info_nce(Q, K, symetric=True)
    with pytest.raises(TypeError, match="'symetric'"):
        InfoNCE(symetric=True)


@pytest.mark.backends("jax")
def test_jax_hessian_matches_naive_autodiff():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy

    def naive(q, k, t):
        q = q / jnp.linalg.norm(q, axis=1, keepdims=True)
        k = k / jnp.linalg.norm(k, axis=1, keepdims=True)
        logits = q @ k.T / t
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diag(logits))

    q, k = jnp.asarray(Q[:5, :4]), jnp.asarray(K[:5, :4])
    t = jnp.asarray(0.3)
    for argnums in (0, 1, 2):
        got = jax.hessian(lambda *a: info_nce(*a[:2], temperature=a[2]), argnums)(q, k, t)
        want = jax.hessian(naive, argnums)(q, k, t)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    got = jax.hessian(lambda q: info_nce(q, k, chunk_size=2, symmetric=True))(q)
    want = jax.hessian(lambda q: (naive(q, k, 0.1) + naive(k, q, 0.1)) / 2)(q)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.backends("jax")
def test_a_traced_temperature_is_not_read():
    jax = pytest.importorskip("jax")
    q, k = jax.numpy.asarray(Q), jax.numpy.asarray(K)
    loss = jax.jit(lambda t: info_nce(q, k, temperature=t))(jax.numpy.asarray(0.1))
    np.testing.assert_allclose(loss, reference_rows(Q, K).mean(), rtol=1e-5)
