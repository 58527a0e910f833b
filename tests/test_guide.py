"""``guide_margin`` / ``guide_strategy`` and ``guide=`` (false-negative masking) on every
backend, against the float64 reference of ``reference_recipes.py``, finite differences and
tiles; sentence-transformers' ``GISTEmbedLoss`` is the peer in ``test_peers.py``."""

from __future__ import annotations

import numpy as np
import pytest

import infonce_xp
from _option_checks import assert_gradients_match_finite_differences, assert_tiled_equals_untiled
from reference_recipes import recipe_loss
from test_recipes import F64

N, M, D, DG, T = 6, 2, 5, 3, 0.2
LABELS = np.array([0, 1, 0, 2, 1, 0])
MARGINS = [("absolute", 0.0), ("absolute", 0.2), ("relative", 0.1)]
# name: (negatives, options)
CASES = {
    "in-batch": (None, {}),
    "same-view+joint": (None, {"same_view_negatives": True, "joint_directions": ("key_to_key",)}),
    "symmetric+same-view": (None, {"symmetric": True, "same_view_negatives": True}),
    "unpaired": ("unpaired", {"in_batch_negatives": True}),
    "paired": ("paired", {"negative_mode": "paired"}),
    "shared+hardness": (
        "paired",
        {
            "negative_mode": "paired",
            "share_negatives": True,
            "in_batch_negatives": True,
            "hardness_mode": "all_negatives",
            "hardness_strength": 2.0,
        },
    ),
    "labels+supcon": (None, {"labels": LABELS, "positives": "supcon"}),
}


def problem(case, n=N, seed=0, guided=True):
    """Inputs correlated enough that some candidates are masked, and a guide of its own
    width (or None)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, D))
    k = q + 0.8 * rng.normal(size=(n, D))
    kind, options = CASES[case]
    neg = {"unpaired": rng.normal(size=(M, D)), "paired": rng.normal(size=(n, M, D))}.get(kind)
    options = dict(options)
    if "labels" in options:
        options["labels"] = options["labels"][:n]
    arrays = (q, k) if neg is None else (q, k, neg)
    guide = tuple(x[..., :DG] + 0.3 * rng.normal(size=(*x.shape[:-1], DG)) for x in arrays)
    return (q, k, neg), options, guide if guided else None


def on(backend, options, guide):
    out = {k: backend.asarray(v) if k == "labels" else v for k, v in options.items()}
    if guide is not None:
        out["guide"] = tuple(backend.asarrays(*guide))
    return out


@pytest.mark.parametrize("guided", [True, False])
@pytest.mark.parametrize(("strategy", "margin"), MARGINS)
@pytest.mark.parametrize("case", list(CASES))
def test_values_match_reference(backend, case, strategy, margin, guided):
    arrays, options, guide = problem(case, guided=guided)
    masking = {"guide_margin": margin, "guide_strategy": strategy}
    for reduction in ("none", "mean"):
        got = infonce_xp.info_nce(
            *backend.asarrays(*arrays),
            temperature=T,
            reduction=reduction,
            **masking,
            **on(backend, options, guide),
        )
        want = recipe_loss(
            *arrays, temperature=T, reduction=reduction, guide=guide, **masking, **options
        )
        backend.assert_close(got, want, **F64, err_msg=f"{case}, {strategy}, {reduction}")


def test_masking_changes_the_loss_and_never_gives_nan():
    """The cases above mask something (else they could not fail), and a margin that hides
    every negative leaves finite rows."""
    arrays, options, guide = problem("in-batch")
    plain = infonce_xp.info_nce(*arrays, reduction="none", **options)
    masked = infonce_xp.info_nce(
        *arrays, reduction="none", guide_margin=0.2, guide=guide[:2], **options
    )
    assert not np.allclose(plain, masked)
    everything = infonce_xp.info_nce(*arrays, reduction="none", guide_margin=10.0, guide=guide[:2])
    np.testing.assert_array_equal(everything, np.zeros(N))  # only the positive is left


def test_the_model_guides_itself_without_guide():
    arrays, options, _ = problem("unpaired")
    q, k, neg = arrays
    masking = {"guide_margin": 0.1, "reduction": "none"}
    itself = infonce_xp.info_nce(*arrays, guide=(q, k, neg), **masking, **options)
    np.testing.assert_allclose(infonce_xp.info_nce(*arrays, **masking, **options), itself, 1e-12)


@pytest.mark.parametrize("guided", [True, False])
@pytest.mark.parametrize("case", ["in-batch", "same-view+joint", "paired", "unpaired"])
def test_gradients_match_finite_differences(backend, case, guided):
    """Without a guide the model's own similarity masks, held constant: the difference
    quotients are taken away from the threshold, where the mask does not change."""
    arrays, options, guide = problem(case, n=4, guided=guided)
    masking = {"guide_margin": 0.2}
    core = masking | on(backend, options, guide)
    reference = masking | options | {"guide": guide}
    assert_gradients_match_finite_differences(backend, arrays, core, reference, T)


@pytest.mark.parametrize("guided", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_tiled_equals_untiled(backend, case, guided):
    arrays, options, guide = problem(case, guided=guided)
    core = {"guide_margin": 0.1, **on(backend, options, guide)}
    assert_tiled_equals_untiled(backend, arrays, core, T, 4)


def test_jit_and_compile():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    (q, k, _), options, guide = problem("same-view+joint")
    want = recipe_loss(q, k, temperature=0.1, guide=guide, guide_margin=0.1, **options)
    f = jax.jit(lambda a, b, g: infonce_xp.info_nce(a, b, guide=g, guide_margin=0.1, **options))
    np.testing.assert_allclose(float(f(q, k, guide)), float(want), rtol=1e-10)
    torch = pytest.importorskip("torch")
    g = torch.compile(
        lambda a, b, *g: infonce_xp.info_nce(
            a, b, guide=g, guide_margin=0.1, chunk_size=4, **options
        ),
        fullgraph=True,
    )
    got = g(*(torch.tensor(x) for x in (q, k, *guide)))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-10)


def test_bad_input():
    (q, k, neg), _, (gq, gk, _) = problem("unpaired")
    with pytest.raises(ValueError, match="needs guide_margin"):
        infonce_xp.info_nce(q, k, guide=(gq, gk))
    with pytest.raises(TypeError, match="guide must be a tuple of 3 arrays"):
        infonce_xp.info_nce(q, k, neg, guide=(gq, gk), guide_margin=0.1)
    with pytest.raises(ValueError, match="guide_positive_key must have the rows"):
        infonce_xp.info_nce(q, k, guide=(gq, gk[:3]), guide_margin=0.1)
    with pytest.raises(ValueError, match="one width"):
        infonce_xp.info_nce(q, k, guide=(gq, k), guide_margin=0.1)
    with pytest.raises(TypeError, match="guide_query must have a real floating dtype"):
        infonce_xp.info_nce(q, k, guide=(np.zeros((N, DG), dtype=np.int64), gk), guide_margin=0.1)
    with pytest.raises(TypeError, match="one array library"):
        torch = pytest.importorskip("torch")
        infonce_xp.info_nce(q, k, guide=(torch.tensor(gq), gk), guide_margin=0.1)
    for options, error in (
        ({"guide_margin": "0.1"}, TypeError),
        ({"guide_margin": np.inf}, ValueError),
        ({"guide_strategy": "both"}, ValueError),
    ):
        with pytest.raises(error, match="guide_"):
            infonce_xp.InfoNCE(**options)
