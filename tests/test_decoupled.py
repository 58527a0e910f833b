"""``decoupled`` (DCL) and ``decoupled_sigma`` (DCLW) on every backend, against the float64
reference of ``reference_recipes.py``, finite differences and the tiled execution; lightly's
own DCL code is the peer in ``test_peers.py``."""

from __future__ import annotations

import numpy as np
import pytest

import infonce_xp
from _option_checks import assert_gradients_match_finite_differences, assert_tiled_equals_untiled
from reference_recipes import recipe_loss
from test_recipes import CASES, F64, on, problem

T = 0.3
MODES = (True, "blocks")
SIGMAS = (None, 0.5)
# the recipes' cases whose rows have negatives besides the own positive
DECOUPLED_CASES = [c for c in CASES if c not in ("unpaired+labelled", "paired+labelled")]


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("decoupled", MODES)
@pytest.mark.parametrize("case", DECOUPLED_CASES)
def test_values_match_reference(backend, case, decoupled, sigma):
    arrays, options = problem(case)
    for reduction in ("none", "mean"):
        got = infonce_xp.info_nce(
            *backend.asarrays(*arrays),
            temperature=T,
            reduction=reduction,
            decoupled=decoupled,
            decoupled_sigma=sigma,
            **on(backend, options),
        )
        want = recipe_loss(
            *arrays,
            temperature=T,
            reduction=reduction,
            decoupled=decoupled,
            decoupled_sigma=sigma,
            **options,
        )
        backend.assert_close(got, want, **F64, err_msg=f"{case}, {reduction}")


def test_the_modes_differ():
    """The checks above could not tell the modes apart if they agreed: they do not."""
    arrays, options = problem("same-view+symmetric")
    values = {
        (d, s): float(infonce_xp.info_nce(*arrays, decoupled=d, decoupled_sigma=s, **options))
        for d in MODES
        for s in SIGMAS
    }
    values[False, None] = float(infonce_xp.info_nce(*arrays, **options))
    assert len({round(v, 9) for v in values.values()}) == len(values), values


@pytest.mark.parametrize("decoupled", MODES)
@pytest.mark.parametrize("case", ["in-batch+paired", "same-view+symmetric", "in-batch+unpaired"])
def test_gradients_match_finite_differences(backend, case, decoupled):
    """The analytic backward (``decoupled_sigma``'s weights held constant: no sigma here)."""
    arrays, options = problem(case, n=5)
    reference = {"decoupled": decoupled, **options}
    core = {"decoupled": decoupled, **on(backend, options)}
    assert_gradients_match_finite_differences(backend, arrays, core, reference, T)


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("decoupled", MODES)
@pytest.mark.parametrize("case", DECOUPLED_CASES)
def test_tiled_equals_untiled(backend, case, decoupled, sigma):
    arrays, options = problem(case)
    core = {"decoupled": decoupled, "decoupled_sigma": sigma, **on(backend, options)}
    assert_tiled_equals_untiled(backend, arrays, core, T, 3)


def test_sigma_weights_are_constants_in_the_gradient():
    """DCLW's weights get no gradient (lightly computes them from detached outputs): the
    gradient is that of the loss with the weights fixed at their values."""
    torch = pytest.importorskip("torch")
    from infonce_xp._cells import vmf_weights
    from reference import normalise

    q, k = np.random.default_rng(4).normal(size=(2, 6, 5))
    w = vmf_weights(np, normalise(q), normalise(k), 0.5)
    leaves = [torch.tensor(a, requires_grad=True) for a in (q, k)]
    infonce_xp.info_nce(*leaves, decoupled=True, decoupled_sigma=0.5).backward()
    fixed = [torch.tensor(a, requires_grad=True) for a in (q, k)]
    u, v = (torch.nn.functional.normalize(x, dim=1) for x in fixed)
    z = u @ v.T / 0.1
    eye = torch.eye(6, dtype=torch.bool)
    rows = torch.logsumexp(z.masked_fill(eye, -torch.inf), 1) - torch.tensor(w) * z.diagonal()
    rows.mean().backward()
    for a, b in zip(leaves, fixed):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_jit_and_compile():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    q, k = np.random.default_rng(5).normal(size=(2, 6, 4))
    options = {"symmetric": True, "same_view_negatives": True, "decoupled": "blocks"}
    want = recipe_loss(q, k, decoupled_sigma=0.5, temperature=0.1, **options)
    f = jax.jit(lambda a, b: infonce_xp.info_nce(a, b, decoupled_sigma=0.5, **options))
    np.testing.assert_allclose(float(f(q, k)), float(want), rtol=1e-10)
    torch = pytest.importorskip("torch")
    g = torch.compile(
        lambda a, b: infonce_xp.info_nce(a, b, decoupled_sigma=0.5, chunk_size=4, **options),
        fullgraph=True,
    )
    np.testing.assert_allclose(float(g(torch.tensor(q), torch.tensor(k))), float(want), rtol=1e-10)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"decoupled": "yes"}, ValueError, "decoupled must be one of"),
        ({"decoupled": 1}, ValueError, "decoupled must be one of"),
        ({"decoupled": True, "positives": "supcon"}, ValueError, "positives='own'"),
        ({"decoupled_sigma": 0.5}, ValueError, "needs decoupled"),
        ({"decoupled": True, "decoupled_sigma": 0.0}, ValueError, "decoupled_sigma"),
        ({"decoupled": True, "decoupled_sigma": "0.5"}, TypeError, "decoupled_sigma"),
    ],
)
def test_bad_options(options, error, match):
    q, k = np.random.default_rng(6).normal(size=(2, 4, 3))
    with pytest.raises(error, match=match):
        infonce_xp.info_nce(q, k, **options)
    with pytest.raises(error, match=match):
        infonce_xp.InfoNCE(**options)
