"""``debiased_prior`` and ``hardness_beta`` at temperature 0.01 with 10^4 negatives: the
estimator written with plain exponentials (the reference's ``debiased_row``, joshr17/HCL's code)
overflows in float32, e^{s/t} reaching e^100; the library works in log space and stays finite
and close to the float64 reference, whose exponentials still fit in float64 (e^{(1+beta)/t} up to
e^200)."""

from __future__ import annotations

import numpy as np
import pytest

import infonce_xp
from reference import normalise
from reference_targets import debiased_row, hcl_criterion, target_loss

T, Q, D = 0.01, 10_000, 8
OPTIONS = {
    "debiased": {"debiased_prior": 1e-3},
    "hcl": {"hardness_beta": 1.0},
    "debiased+hcl": {"debiased_prior": 1e-3, "hardness_beta": 1.0},
    "debiased+hcl+margin": {"debiased_prior": 5e-4, "hardness_beta": 0.5, "margin": 0.02},
    "clamped": {"debiased_prior": 0.1},  # every row at its floor Q e^{-1/t}: loss ~ 0
}


def problem(n=4, seed=0):
    """Positives at cosine ~0.9999 and, among 10^4 unpaired negatives, 500 hard ones (~0.995)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, D))
    k = q + 0.01 * rng.normal(size=(n, D))
    neg = rng.normal(size=(Q, D))
    neg[:500] = q[rng.integers(0, n, size=500)] + 0.1 * rng.normal(size=(500, D))
    return q, k, neg


def test_plain_exponentials_overflow_in_float32():
    """The point of these tests: written with plain exponentials, the loss of a row is not
    finite in float32 (inf or nan), and is in float64."""
    q, k, neg = (normalise(a) for a in problem())
    z_p, z_n = q[0] @ k[0] / T, neg @ q[0] / T
    for options in OPTIONS.values():
        tau, beta = options.get("debiased_prior", 0.0), options.get("hardness_beta", 0.0)
        assert not np.isfinite(debiased_row(z_p, z_n, T, tau, beta, dtype=np.float32))
        assert np.isfinite(debiased_row(z_p, z_n, T, tau, beta))
    torch = pytest.importorskip("torch")
    x, y = (torch.tensor(a, dtype=torch.float32) for a in (q, k))
    assert not torch.isfinite(hcl_criterion(x, y, 0.1, 1.0, "hard", T))
    assert torch.isfinite(hcl_criterion(x.double(), y.double(), 0.1, 1.0, "hard", T))


@pytest.mark.parametrize("chunk_size", [None, 1024])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_finite_and_close_at_a_small_temperature(backend, option, chunk_size):
    arrays = problem()
    options = OPTIONS[option]
    want = target_loss(*arrays, temperature=T, reduction="none", **options)
    assert np.all(np.isfinite(want))
    grad_output = np.linspace(0.5, 1.5, len(arrays[0]))
    results = {}
    for dtype in ("float64", "float32"):
        loss, grads = infonce_xp.info_nce_value_and_grad(
            *backend.asarrays(*arrays, dtype=dtype),
            temperature=T,
            reduction="none",
            grad_output=backend.asarray(grad_output, dtype),
            chunk_size=chunk_size,
            **options,
        )
        results[dtype] = [backend.to_numpy(x).astype(np.float64) for x in (loss, *grads[:3])]
        for x in results[dtype]:
            assert np.all(np.isfinite(x)), dtype
    backend.assert_close(loss, want, rtol=1e-3, atol=1e-3, dtype="float32")
    np.testing.assert_allclose(results["float64"][0], want, rtol=1e-9, atol=1e-9)
    for a, b in zip(results["float32"][1:], results["float64"][1:]):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-3 * np.abs(b).max() + 1e-8)
