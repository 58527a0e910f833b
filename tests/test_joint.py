"""``joint_directions`` (the key's cells in its query's row, one log-sum-exp) on every backend,
against the float64 reference of ``reference_recipes.py``, finite differences and tiles;
sentence-transformers' own code is the peer in ``test_peers.py``."""

from __future__ import annotations

import numpy as np
import pytest

import infonce_xp
from _option_checks import assert_gradients_match_finite_differences, assert_tiled_equals_untiled
from reference_recipes import recipe_loss
from test_recipes import F64

N, M, D, T = 6, 2, 5, 0.2
JOINT = [("key_to_query",), ("key_to_key",), ("key_to_key", "key_to_query")]
LABELS = np.array([0, 1, 0, 2, 1, 0])
# name: (negatives, options)
CASES = {
    "in-batch": (None, {}),
    "same-view": (None, {"same_view_negatives": True}),
    "shared": ("paired", {"share_negatives": True, "in_batch_negatives": True}),
    "shared+same-view+hardness": (
        "paired",
        {
            "share_negatives": True,
            "in_batch_negatives": True,
            "same_view_negatives": True,
            "hardness_mode": "in_batch_negatives",
            "hardness_strength": 2.0,
        },
    ),
    "paired": ("paired", {"in_batch_negatives": True}),
    "unpaired": ("unpaired", {"in_batch_negatives": True}),
    "labels": (None, {"labels": LABELS, "same_view_negatives": True}),
    "labels+supcon": (None, {"labels": LABELS, "positives": "supcon"}),
    "decoupled-blocks": ("paired", {"share_negatives": True, "decoupled": "blocks"}),
}


def problem(case, n=N, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, D))
    k = q + rng.normal(size=(n, D))
    kind, options = CASES[case]
    neg = {"unpaired": rng.normal(size=(M, D)), "paired": rng.normal(size=(n, M, D))}.get(kind)
    options = dict(options, negative_mode="paired" if kind == "paired" else "unpaired")
    if "labels" in options:
        options["labels"] = options["labels"][:n]
    return (q, k, neg), options


def on(backend, options):
    return {k: backend.asarray(v) if k == "labels" else v for k, v in options.items()}


@pytest.mark.parametrize("joint", JOINT)
@pytest.mark.parametrize("case", list(CASES))
def test_values_match_reference(backend, case, joint):
    arrays, options = problem(case)
    for reduction in ("none", "mean"):
        got = infonce_xp.info_nce(
            *backend.asarrays(*arrays),
            temperature=T,
            reduction=reduction,
            joint_directions=joint,
            **on(backend, options),
        )
        want = recipe_loss(
            *arrays, temperature=T, reduction=reduction, joint_directions=joint, **options
        )
        backend.assert_close(got, want, **F64, err_msg=f"{case}, {joint}, {reduction}")


@pytest.mark.parametrize("case", ["shared", "labels", "unpaired"])
def test_gradients_match_finite_differences(backend, case):
    arrays, options = problem(case, n=4)
    joint = {"joint_directions": ("key_to_key", "key_to_query")}
    core = joint | on(backend, options)
    assert_gradients_match_finite_differences(backend, arrays, core, joint | options, T)


@pytest.mark.parametrize("joint", JOINT)
@pytest.mark.parametrize("case", list(CASES))
def test_tiled_equals_untiled(backend, case, joint):
    arrays, options = problem(case)
    core = {"joint_directions": joint, **on(backend, options)}
    assert_tiled_equals_untiled(backend, arrays, core, T, 4)


def test_jit_and_compile():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    (q, k, neg), options = problem("shared")
    joint = {"joint_directions": ("key_to_key", "key_to_query"), "same_view_negatives": True}
    want = recipe_loss(q, k, neg, temperature=0.1, **joint, **options)
    f = jax.jit(lambda *a: infonce_xp.info_nce(*a, **joint, **options))
    np.testing.assert_allclose(float(f(q, k, neg)), float(want), rtol=1e-10)
    torch = pytest.importorskip("torch")
    g = torch.compile(
        lambda *a: infonce_xp.info_nce(*a, chunk_size=4, **joint, **options), fullgraph=True
    )
    got = g(*(torch.tensor(x) for x in (q, k, neg)))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-10)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"joint_directions": "key_to_key"}, TypeError, "joint_directions must be a tuple"),
        ({"joint_directions": ("doc_to_doc",)}, ValueError, "joint_directions must hold"),
        ({"joint_directions": ("key_to_key",) * 2}, ValueError, "distinct"),
        ({"joint_directions": ("key_to_key",), "symmetric": True}, ValueError, "symmetric"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        infonce_xp.InfoNCE(**options)
