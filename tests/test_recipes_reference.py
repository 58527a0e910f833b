"""The recipes' float64 reference against the peers' own code: the seed, pytorch-metric-learning,
optax and sentence-transformers. These need no ``infonce_xp``; they vouch for the oracle that
``test_recipes.py`` holds the library to.

Mappings found in the peers' source (pytorch-metric-learning 2.9, optax 0.2.8,
sentence-transformers 6.2):

- ``SupConLoss(t)(x, y)``: ``supervised_loss(x, y, t, "supcon")``; rows without a positive give
  0 and its ``AvgNonZeroReducer`` leaves them out of the mean (so would a row whose loss is
  exactly 0). A batch without any positive pair or without any negative pair gives 0.
- ``NTXentLoss(t)(x, y)`` and ``optax.ntxent(x, y, t)``: ``supervised_loss(..., "pairs")``, the
  mean over positive pairs (optax: 0/0 = NaN when there is no pair at all).
- With ``ref_emb=k, ref_labels=y.clone()`` (a different object, else pml hides the diagonal)
  they score queries against keys: ``info_nce(q, k, labels=y, positives=...)``.
- ``SelfSupervisedLoss(NTXentLoss(t))(z0, z1)``: ``symmetric=True, same_view_negatives=True``.
- ``MultipleNegativesRankingLoss(model, scale=1/t).compute_loss_from_embeddings([q, k, n1, ...])``
  stacks every column's hard negatives into one shared block: ``in_batch_negatives=True`` with
  unpaired ``concat([n1, ...])``; its "query_to_query" direction (joint) is
  ``same_view_negatives=True``; "doc_to_query" (per_direction) is ``symmetric=True``, the keys
  scored against the queries only.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference import reference_rows, seed
from reference_recipes import recipe_loss, recipe_rows, supervised_loss, supervised_rows

POSITIVES = ("own", "supcon", "pairs")
F64 = {"rtol": 1e-10, "atol": 1e-10}
F32 = {"rtol": 1e-5, "atol": 1e-5}


def data(n=10, d=6, m=7, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, d))
    k = q + rng.normal(size=(n, d))
    neg, paired = rng.normal(size=(m, d)), rng.normal(size=(n, m, d))
    labels = rng.integers(0, classes, size=n)
    return q, k, neg, paired, labels, rng.integers(0, classes, size=m)


def _torch(*arrays, dtype="float64"):
    torch = pytest.importorskip("torch")
    return [torch.asarray(np.asarray(a, dtype=dtype)) for a in arrays]


def _labels(y):
    import torch

    return torch.asarray(np.asarray(y, dtype=np.int64))


def _pml():
    return pytest.importorskip(
        "pytorch_metric_learning.losses",
        reason="pytorch-metric-learning is the SupCon/NT-Xent peer",
    )


# The seed: without labels every mode is info-nce-pytorch ---------------------------------


@pytest.mark.backends("torch")
@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("mode", ["in-batch", "unpaired", "paired", "symmetric"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_without_labels_every_mode_is_the_seed(positives, mode, dtype):
    pytest.importorskip("info_nce", reason="info-nce-pytorch is the seed")
    q, k, neg, paired, _, _ = data()
    q, k, neg, paired = (a.astype(dtype) for a in (q, k, neg, paired))
    negatives = {"unpaired": neg, "paired": paired}.get(mode)
    negative_mode = "paired" if mode == "paired" else "unpaired"
    options = {"positives": positives, "negative_mode": negative_mode}
    rows, pairs = recipe_rows(q, k, negatives, symmetric=mode == "symmetric", **options)
    if mode == "symmetric":
        expected = (seed(q, k, None, 0.1, "none") + seed(k, q, None, 0.1, "none")) / 2
    else:
        expected = seed(q, k, negatives, 0.1, "none", negative_mode, dtype=dtype)
    np.testing.assert_allclose(rows, expected, **(F64 if dtype == "float64" else F32))
    assert pairs == len(q)
    mean = recipe_loss(q, k, negatives, symmetric=mode == "symmetric", **options)
    np.testing.assert_allclose(mean, expected.mean(), **(F64 if dtype == "float64" else F32))
    np.testing.assert_allclose(
        rows, reference_rows(q, k, negatives, 0.1, negative_mode, mode == "symmetric"), **F64
    )


@pytest.mark.backends("torch")
@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize("same_view", [False, True])
def test_own_is_the_seed_over_the_kept_candidates(paired, same_view):
    """Each "own" row equals the seed for that query with the not-same-class candidates as its
    unpaired negatives: duplicates and same-class negatives leave the denominator."""
    pytest.importorskip("info_nce", reason="info-nce-pytorch is the seed")
    q, k, neg, paired_neg, y, ny = data(classes=2)
    negatives, negative_labels = (paired_neg, np.tile(ny, (len(q), 1))) if paired else (neg, ny)
    rows, _ = recipe_rows(
        q,
        k,
        negatives,
        labels=y,
        negative_labels=negative_labels,
        in_batch_negatives=True,
        same_view_negatives=same_view,
        negative_mode="paired" if paired else "unpaired",
    )
    for i in range(len(q)):
        others = np.arange(len(q)) != i
        pool = [k[others & (y != y[i])]]
        pool += [q[others & (y != y[i])]] if same_view else []
        row_negatives = negatives[i] if paired else negatives
        pool.append(row_negatives[negative_labels[i] != y[i]] if paired else neg[ny != y[i]])
        expected = seed(q[i : i + 1], k[i : i + 1], np.concatenate(pool), 0.1, "none")
        np.testing.assert_allclose(rows[i], expected[0], **F64)


# pytorch-metric-learning ---------------------------------------------------------------


@pytest.mark.backends("torch")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("classes", [3, 7])
@pytest.mark.parametrize("t", [0.07, 0.5])
def test_supervised_against_pml(dtype, classes, t):
    losses = _pml()
    x, _, _, _, y, _ = data(n=12, classes=classes, seed=classes)
    _, _, anchors = supervised_rows(x, y)
    assert len(set(y)) < len(y) and (classes == 3 or anchors < len(y))  # rows without positive
    (x_t,) = _torch(x, dtype=dtype)
    tol = F64 if dtype == "float64" else F32
    for positives, peer in (("supcon", losses.SupConLoss(t)), ("pairs", losses.NTXentLoss(t))):
        got = peer(x_t, _labels(y)).item()
        np.testing.assert_allclose(got, supervised_loss(x, y, t, positives), **tol)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("with_negatives", [False, True])
def test_queries_against_keys_with_labels_against_pml(with_negatives):
    """pml with ``ref_emb``: in-batch keys (plus unpaired negatives with their labels)."""
    losses = _pml()
    q, k, neg, _, y, ny = data(classes=3, seed=4)
    refs, ref_labels = (
        (np.concatenate([k, neg]), np.concatenate([y, ny])) if with_negatives else (k, y)
    )
    q_t, ref_t = _torch(q, refs)
    options = {"labels": y, "in_batch_negatives": True, "temperature": 0.2}
    if with_negatives:
        options |= {"negative_keys": neg, "negative_labels": ny}
    for positives, peer in (("supcon", losses.SupConLoss(0.2)), ("pairs", losses.NTXentLoss(0.2))):
        got = peer(q_t, _labels(y), ref_emb=ref_t, ref_labels=_labels(ref_labels)).item()
        np.testing.assert_allclose(got, recipe_loss(q, k, positives=positives, **options), **F64)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("classes", [None, 2, 4])
def test_two_views_against_pml(classes):
    """NT-Xent / SupCon of two views = symmetric with same-view negatives = supervised on the
    concatenation (pml's SelfSupervisedLoss without labels)."""
    losses = _pml()
    z0, z1, _, _, y, _ = data(n=8, classes=classes or 2, seed=5)
    y = np.arange(len(z0)) if classes is None else y
    both, both_labels = np.concatenate([z0, z1]), np.concatenate([y, y])
    z0_t, z1_t, both_t = _torch(z0, z1, both)
    options = {"symmetric": True, "same_view_negatives": True, "temperature": 0.3}
    if classes is not None:
        options["labels"] = y
    for positives, peer in (("supcon", losses.SupConLoss(0.3)), ("pairs", losses.NTXentLoss(0.3))):
        expected = recipe_loss(z0, z1, positives=positives, **options)
        got = peer(both_t, _labels(both_labels)).item()
        np.testing.assert_allclose(got, expected, **F64)
        np.testing.assert_allclose(
            expected, supervised_loss(both, both_labels, 0.3, positives), **F64
        )
    if classes is None:
        got = losses.SelfSupervisedLoss(losses.NTXentLoss(0.3))(z0_t, z1_t).item()
        np.testing.assert_allclose(got, recipe_loss(z0, z1, **options), **F64)


# optax ------------------------------------------------------------------------------------


@pytest.mark.backends("jax")
@pytest.mark.parametrize("classes", [2, 5, 9])
def test_supervised_pairs_against_optax(classes):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax", reason="optax.ntxent is the JAX NT-Xent peer")
    jax.config.update("jax_enable_x64", True)
    x, _, _, _, y, _ = data(n=12, classes=classes, seed=classes)
    got = float(optax.ntxent(jax.numpy.asarray(x), jax.numpy.asarray(y), 0.1))
    np.testing.assert_allclose(got, supervised_loss(x, y, 0.1, "pairs"), **F64)
    got32 = float(optax.ntxent(jax.numpy.asarray(x, dtype="float32"), jax.numpy.asarray(y), 0.1))
    np.testing.assert_allclose(got32, supervised_loss(x, y, 0.1, "pairs"), **F32)


# sentence-transformers --------------------------------------------------------------------


def _mnrl(t, **kwargs):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip(
        "sentence_transformers.losses",
        reason="sentence-transformers' MultipleNegativesRankingLoss is the hard-negative peer",
    )
    return st.MultipleNegativesRankingLoss(torch.nn.Module(), scale=1 / t, **kwargs)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("columns", [0, 1, 3])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_hard_negatives_against_mnrl(columns, dtype):
    q, k, _, paired, _, _ = data(m=3, seed=6)
    hard = [paired[:, c] for c in range(columns)]
    negatives = np.concatenate(hard) if hard else None
    tol = F64 if dtype == "float64" else F32
    embeddings = _torch(q, k, *hard, dtype=dtype)
    options = {"in_batch_negatives": True, "temperature": 0.05}
    got = _mnrl(0.05).compute_loss_from_embeddings(embeddings, None).item()
    np.testing.assert_allclose(got, recipe_loss(q, k, negatives, **options), **tol)
    joint = _mnrl(0.05, directions=("query_to_doc", "query_to_query"), partition_mode="joint")
    got = joint.compute_loss_from_embeddings(embeddings, None).item()
    expected = recipe_loss(q, k, negatives, same_view_negatives=True, **options)
    np.testing.assert_allclose(got, expected, **tol)
    both = _mnrl(0.05, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    got = both.compute_loss_from_embeddings(embeddings, None).item()
    np.testing.assert_allclose(got, recipe_loss(q, k, negatives, symmetric=True, **options), **tol)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("columns", [0, 1, 3])
@pytest.mark.parametrize("mode", ["in_batch_negatives", "hard_negatives", "all_negatives"])
def test_hardness_against_mnrl(columns, mode):
    """ST's hardness weighting is the reference's ``hardness_mode`` with the hard-negative
    columns as shared paired negatives (row i's own known)."""
    q, k, _, paired, _, _ = data(m=3, seed=7)
    hard = [paired[:, c] for c in range(columns)]
    negatives = paired[:, :columns] if columns else None
    peer = _mnrl(0.05, hardness_mode=mode, hardness_strength=4.0)
    got = peer.compute_loss_from_embeddings(_torch(q, k, *hard, dtype="float64"), None).item()
    options = {"hardness_mode": mode, "hardness_strength": 4.0, "share_negatives": True}
    expected = recipe_loss(
        q,
        k,
        negatives,
        in_batch_negatives=True,
        temperature=0.05,
        negative_mode="paired",
        **options,
    )
    np.testing.assert_allclose(got, expected, **F64)
    plain = recipe_loss(
        q,
        k,
        negatives,
        in_batch_negatives=True,
        temperature=0.05,
        negative_mode="paired",
        share_negatives=True,
    )
    if mode != "hard_negatives" or columns:
        assert abs(float(expected) - float(plain)) > 1e-3  # the weighting changes the loss


# The reference's own edge cases ----------------------------------------------------------


def test_degenerate_rows_are_finite_zeros():
    q, k, neg, _, _, _ = data(n=5)
    one_class = np.zeros(5, dtype=int)
    rows, _ = recipe_rows(q, k, labels=one_class)  # every other key ignored: LSE of one logit
    np.testing.assert_allclose(rows, 0.0, atol=1e-15)
    for positives in ("supcon", "pairs"):
        lonely = np.arange(5)  # no row has a positive
        assert supervised_loss(q, lonely, positives=positives) == 0.0
        rows = supervised_loss(q, np.array([0, 0, 1, 2, 3]), positives=positives, reduction="none")
        assert rows[0] > 0 and rows[1] > 0 and np.all(rows[2:] == 0.0)
    # all one class with explicit negatives of other classes: "pairs" rows have every key as a
    # positive and the negatives as the only denominator
    rows = recipe_loss(
        q,
        k,
        neg,
        labels=one_class,
        negative_labels=np.ones(7, dtype=int),
        in_batch_negatives=True,
        positives="pairs",
        reduction="none",
    )
    assert np.all(np.isfinite(rows)) and np.all(rows > 0)
