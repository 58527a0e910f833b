"""``hardness_mode`` / ``hardness_strength`` and ``share_negatives`` on every backend, against
the float64 reference of ``reference_recipes.py`` (itself checked against
sentence-transformers in ``test_recipes_reference.py``), finite differences and tiles."""

from __future__ import annotations

import numpy as np
import pytest

import infonce_xp
from _option_checks import assert_tiled_equals_untiled
from reference import finite_difference
from reference_recipes import recipe_loss
from test_recipes import F64

N, M, D, T, ALPHA = 6, 2, 5, 0.2, 3.0
MODES = ("in_batch_negatives", "hard_negatives", "all_negatives")
# name: (negatives, options)
CASES = {
    "shared": ("paired", {"share_negatives": True, "in_batch_negatives": True}),
    "shared+symmetric": (
        "paired",
        {"share_negatives": True, "in_batch_negatives": True, "symmetric": True},
    ),
    "shared+same-view+labels": (
        "paired",
        {
            "share_negatives": True,
            "in_batch_negatives": True,
            "same_view_negatives": True,
            "labels": np.array([0, 1, 0, 2, 1, 0]),
        },
    ),
    "shared-alone": ("paired", {"share_negatives": True}),
    "paired": ("paired", {"in_batch_negatives": True}),
    "unpaired": ("unpaired", {"in_batch_negatives": True}),
    "in-batch": (None, {}),
}


def problem(case, n=N, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, D))
    k = q + rng.normal(size=(n, D))
    kind, options = CASES[case]
    neg = {"unpaired": rng.normal(size=(M, D)), "paired": rng.normal(size=(n, M, D))}.get(kind)
    options = dict(options, negative_mode="paired" if kind == "paired" else "unpaired")
    return (q, k, neg), options


def on(backend, options):
    return {k: backend.asarray(v) if k == "labels" else v for k, v in options.items()}


def cases():
    for case, (kind, _) in CASES.items():
        for mode in MODES:
            if not (mode == "hard_negatives" and kind == "unpaired"):
                yield case, mode


@pytest.mark.parametrize(("case", "mode"), list(cases()))
def test_values_match_reference(backend, case, mode):
    arrays, options = problem(case)
    hardness = {"hardness_mode": mode, "hardness_strength": ALPHA}
    for reduction in ("none", "mean"):
        got = infonce_xp.info_nce(
            *backend.asarrays(*arrays),
            temperature=T,
            reduction=reduction,
            **hardness,
            **on(backend, options),
        )
        want = recipe_loss(*arrays, temperature=T, reduction=reduction, **hardness, **options)
        backend.assert_close(got, want, **F64, err_msg=f"{case}, {mode}, {reduction}")


def test_share_negatives_alone_is_the_unpaired_concatenation():
    (q, k, neg), _ = problem("shared")
    shared = infonce_xp.info_nce(
        q, k, neg, negative_mode="paired", share_negatives=True, in_batch_negatives=True
    )
    flat = infonce_xp.info_nce(q, k, neg.reshape(-1, D), in_batch_negatives=True)
    np.testing.assert_allclose(shared, flat, rtol=1e-12)


def test_strength_zero_or_no_mode_changes_nothing():
    arrays, options = problem("shared")
    plain = infonce_xp.info_nce(*arrays, **options)
    for hardness in ({"hardness_mode": "all_negatives"}, {"hardness_strength": 5.0}):
        np.testing.assert_array_equal(infonce_xp.info_nce(*arrays, **hardness, **options), plain)
    weighted = infonce_xp.info_nce(
        *arrays, hardness_mode="all_negatives", hardness_strength=5.0, **options
    )
    assert abs(float(weighted) - float(plain)) > 1e-3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["shared", "shared+symmetric", "paired"])
def test_gradients_match_finite_differences(backend, case, mode):
    """The weights' similarity is held constant (stop-gradient), as in sentence-transformers:
    the reference differentiates through it, so the difference quotients are of the loss with
    the weighted logits' extra term frozen at the point."""
    arrays, options = problem(case, n=4)
    hardness = {"hardness_mode": mode, "hardness_strength": ALPHA}
    grad_output = np.random.default_rng(3).normal(size=4)
    _, grads = infonce_xp.info_nce_value_and_grad(
        *backend.asarrays(*arrays),
        temperature=backend.asarray(np.asarray(T)),
        reduction="none",
        grad_output=backend.asarray(grad_output),
        **hardness,
        **options,
    )
    torch = pytest.importorskip("torch")
    leaves = [torch.tensor(a, requires_grad=True) for a in (*arrays, np.asarray(T))]
    want = _torch_frozen(leaves, hardness, options)
    (want * torch.tensor(grad_output)).sum().backward()
    for name, got, leaf in zip(("query", "positive_key", "negative_keys", "t"), grads, leaves):
        backend.assert_close(got, leaf.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)
    # and finite differences of the loss at a fixed temperature agree with torch's gradient
    q, k, neg = arrays
    fd = finite_difference(
        lambda x: float(
            recipe_loss(x, k, neg, temperature=T, reduction="none", **options) @ grad_output
        ),
        q,
    )
    plain = [torch.tensor(a, requires_grad=True) for a in (*arrays, np.asarray(T))]
    (_torch_frozen(plain, {}, options) * torch.tensor(grad_output)).sum().backward()
    np.testing.assert_allclose(plain[0].grad.numpy(), fd, rtol=1e-6, atol=1e-8)


def _torch_frozen(leaves, hardness, options):
    """The loss rows in float64 torch autograd, written out (in-batch keys, then every row's
    paired negatives shared or its own), with hardness's similarity detached."""
    import torch

    q, k, neg, t = leaves
    u, v = (torch.nn.functional.normalize(x, dim=-1) for x in (q, k))
    w = torch.nn.functional.normalize(neg, dim=-1)
    n, m = w.shape[:2]
    shared = options.get("share_negatives", False)
    s_keys = u @ v.T
    s_neg = u @ w.reshape(n * m, -1).T if shared else torch.einsum("nd,nmd->nm", u, w)
    eye = torch.eye(n, dtype=torch.bool)
    own = eye.repeat_interleave(m, dim=1) if shared else torch.ones(n, m, dtype=torch.bool)
    z_keys, z_neg = s_keys / t, s_neg / t
    mode, alpha = hardness.get("hardness_mode"), hardness.get("hardness_strength", 0.0)
    if mode in ("in_batch_negatives", "all_negatives"):
        z_keys = z_keys + alpha * torch.where(eye, 0.0, s_keys.detach())
    pick = {"in_batch_negatives": ~own, "hard_negatives": own}.get(mode, torch.ones_like(own))
    if mode is not None:
        z_neg = z_neg + alpha * torch.where(pick, s_neg.detach(), 0.0)
    z = torch.cat([z_keys, z_neg], dim=1)
    rows = torch.logsumexp(z, dim=1) - z_keys.diagonal()
    if options.get("symmetric"):
        back = (v @ u.T) / t
        rows = (rows + torch.logsumexp(back, dim=1) - back.diagonal()) / 2
    return rows


@pytest.mark.parametrize(("case", "mode"), list(cases()))
def test_tiled_equals_untiled(backend, case, mode):
    arrays, options = problem(case)
    core = {"hardness_mode": mode, "hardness_strength": ALPHA, **on(backend, options)}
    assert_tiled_equals_untiled(backend, arrays, core, T, 4)


def test_jit_and_compile():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    (q, k, neg), options = problem("shared")
    hardness = {"hardness_mode": "in_batch_negatives", "hardness_strength": ALPHA}
    want = recipe_loss(q, k, neg, temperature=0.1, **hardness, **options)
    f = jax.jit(lambda *a: infonce_xp.info_nce(*a, **hardness, **options))
    np.testing.assert_allclose(float(f(q, k, neg)), float(want), rtol=1e-10)
    torch = pytest.importorskip("torch")
    g = torch.compile(
        lambda *a: infonce_xp.info_nce(*a, chunk_size=4, **hardness, **options), fullgraph=True
    )
    got = g(*(torch.tensor(x) for x in (q, k, neg)))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-10)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"hardness_mode": "hard"}, ValueError, "hardness_mode must be one of"),
        ({"hardness_strength": -1.0}, ValueError, "hardness_strength"),
        ({"hardness_strength": "1"}, TypeError, "hardness_strength"),
        ({"share_negatives": 1}, TypeError, "share_negatives"),
        ({"share_negatives": True}, ValueError, "negative_mode='paired'"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        infonce_xp.InfoNCE(**options)


def test_hard_negatives_need_each_rows_own():
    (q, k, neg), _ = problem("unpaired")
    with pytest.raises(ValueError, match=r"hard_negatives.*negative_mode='paired'"):
        infonce_xp.info_nce(q, k, neg, hardness_mode="hard_negatives", hardness_strength=1.0)
