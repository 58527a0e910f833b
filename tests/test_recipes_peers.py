"""The recipes against the peers' own code, directly: values and autograd gradients.

``test_recipes_reference.py`` vouches for the float64 reference against the peers and
``test_recipes.py`` holds ``infonce_xp`` to the reference; here ``infonce_xp`` meets the peers
with nothing in between, in float64 (1e-10) and float32 (1e-5), through the same mappings
(see that module's docstring): pytorch-metric-learning's ``SupConLoss`` / ``NTXentLoss`` (with
``ref_emb`` and through ``SelfSupervisedLoss``), sentence-transformers'
``MultipleNegativesRankingLoss`` and ``optax.ntxent``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

import infonce_xp

F64 = {"rtol": 1e-10, "atol": 1e-10}
F32 = {"rtol": 1e-5, "atol": 1e-5}
DTYPES = ("float64", "float32")
# class 3 is alone: a row without a positive (SupCon leaves it out of the mean)
LONELY = np.array([0, 1, 0, 2, 1, 0, 3, 2, 1, 0])


def data(n=10, d=6, m=5, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, d))
    k = q + rng.normal(size=(n, d))
    return q, k, rng.normal(size=(m, d)), rng.normal(size=(n, 2, d))


def tol(dtype: str) -> dict[str, float]:
    return F64 if dtype == "float64" else F32


def _pml() -> Any:
    return pytest.importorskip(
        "pytorch_metric_learning.losses",
        reason="pytorch-metric-learning is the SupCon/NT-Xent peer",
    )


def _labels(y: Any) -> Any:
    import torch

    return torch.asarray(np.asarray(y, dtype=np.int64))


def agree(
    ours: Callable[..., Any],
    peer: Callable[..., Any],
    arrays: Sequence[np.ndarray],
    dtype: str,
    what: str = "",
) -> None:
    """``ours(*leaves)`` and ``peer(*leaves)`` on separate torch leaves of ``arrays`` in
    ``dtype``: equal losses and equal autograd gradients of every leaf."""
    torch = pytest.importorskip("torch")
    results = []
    for fn in (ours, peer):
        leaves = [torch.tensor(a.astype(dtype), requires_grad=True) for a in arrays]
        loss = fn(*leaves)
        assert loss.dtype == getattr(torch, dtype), what
        loss.backward()
        results.append((loss.detach().numpy(), [leaf.grad.numpy() for leaf in leaves]))
    (got, got_grads), (want, want_grads) = results
    np.testing.assert_allclose(got, want, **tol(dtype), err_msg=f"{what}: loss")
    for i, (a, b) in enumerate(zip(got_grads, want_grads)):
        np.testing.assert_allclose(a, b, **tol(dtype), err_msg=f"{what}: gradient of input {i}")


# pytorch-metric-learning ---------------------------------------------------------------


@pytest.mark.backends("torch")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("labels", ["lonely", "three-classes", "distinct"])
@pytest.mark.parametrize("t", [0.07, 0.5])
def test_supervised_against_pml(dtype, labels, t):
    """``SupConLoss(t)(x, y)`` is positives="supcon", ``NTXentLoss(t)(x, y)`` positives="pairs",
    with a class alone (a row without positive), and with every row alone (both give 0)."""
    losses = _pml()
    x, *_ = data(seed=1)
    y = {
        "lonely": LONELY,
        "three-classes": np.random.default_rng(2).integers(0, 3, size=10),
        "distinct": np.arange(10),
    }[labels]
    for positives, peer in (("supcon", losses.SupConLoss(t)), ("pairs", losses.NTXentLoss(t))):
        agree(
            lambda v, p=positives: infonce_xp.supervised_info_nce(v, _labels(y), t, positives=p),
            lambda v, peer=peer: peer(v, _labels(y)),
            [x],
            dtype,
            positives,
        )


@pytest.mark.backends("torch")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_negatives", [False, True])
def test_queries_against_keys_against_pml(dtype, with_negatives):
    """pml with ``ref_emb=k`` (and the negatives appended, with their labels) and
    ``ref_labels`` a different tensor is ``info_nce(q, k, labels=y, positives=...)``."""
    losses = _pml()
    q, k, neg, _ = data(seed=3)
    y = LONELY
    ny = np.array([0, 3, 4, 1, 4])  # class 4: only among the negatives
    arrays = [q, k, neg] if with_negatives else [q, k]
    ref_labels = np.concatenate([y, ny]) if with_negatives else y
    for positives, peer in (("supcon", losses.SupConLoss(0.2)), ("pairs", losses.NTXentLoss(0.2))):
        options: dict[str, Any] = {"temperature": 0.2, "positives": positives}

        def ours(q, k, *neg, options=options):
            if neg:
                options = {**options, "negative_labels": _labels(ny), "in_batch_negatives": True}
            return infonce_xp.info_nce(q, k, *neg, labels=_labels(y), **options)

        def theirs(q, k, *neg, peer=peer):
            import torch

            refs = torch.cat([k, *neg])
            return peer(q, _labels(y), ref_emb=refs, ref_labels=_labels(ref_labels))

        agree(ours, theirs, arrays, dtype, positives)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("dtype", DTYPES)
def test_self_supervised_loss_against_pml(dtype):
    """``SelfSupervisedLoss(NTXentLoss(t))(z0, z1)`` (or SupConLoss: one positive per row) is
    ``symmetric=True, same_view_negatives=True`` with reduction "mean"; with
    ``symmetric=False`` it scores z0 against z1 only: the plain in-batch loss."""
    losses = _pml()
    z0, z1, _, _ = data(n=8, seed=4)
    for inner in (losses.NTXentLoss(0.3), losses.SupConLoss(0.3)):
        agree(
            lambda a, b: infonce_xp.info_nce(
                a, b, temperature=0.3, symmetric=True, same_view_negatives=True
            ),
            losses.SelfSupervisedLoss(inner),
            [z0, z1],
            dtype,
            type(inner).__name__,
        )
        agree(
            lambda a, b: infonce_xp.info_nce(a, b, temperature=0.3),
            losses.SelfSupervisedLoss(inner, symmetric=False),
            [z0, z1],
            dtype,
            f"{type(inner).__name__}, one direction",
        )


@pytest.mark.backends("torch")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("positives", ["supcon", "pairs"])
def test_two_labelled_views_against_pml(dtype, positives):
    """pml on ``cat([z0, z1])`` with labels ``cat([y, y])`` is the symmetric same-view loss with
    labels ``y``, and ``supervised_info_nce`` of the concatenation."""
    import torch

    losses = _pml()
    z0, z1, _, _ = data(n=8, seed=5)
    y = np.array([0, 1, 0, 2, 1, 3, 2, 0])
    peer = {"supcon": losses.SupConLoss(0.3), "pairs": losses.NTXentLoss(0.3)}[positives]
    both = _labels(np.concatenate([y, y]))
    agree(
        lambda a, b: infonce_xp.info_nce(
            a,
            b,
            temperature=0.3,
            labels=_labels(y),
            positives=positives,
            symmetric=True,
            same_view_negatives=True,
        ),
        lambda a, b: peer(torch.cat([a, b]), both),
        [z0, z1],
        dtype,
    )
    agree(
        lambda a, b: infonce_xp.supervised_info_nce(
            torch.cat([a, b]), both, 0.3, positives=positives
        ),
        lambda a, b: peer(torch.cat([a, b]), both),
        [z0, z1],
        dtype,
    )


# sentence-transformers --------------------------------------------------------------------


def _mnrl(t: float, **kwargs: Any) -> Any:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip(
        "sentence_transformers.losses",
        reason="sentence-transformers' MultipleNegativesRankingLoss is the hard-negative peer",
    )
    return st.MultipleNegativesRankingLoss(torch.nn.Module(), scale=1 / t, **kwargs)


MNRL_VARIANTS = {
    # name: (MNRL's keywords, infonce_xp's options besides in_batch_negatives=True)
    "query_to_doc": ({}, {}),
    "joint+query_to_query": (
        {"directions": ("query_to_doc", "query_to_query"), "partition_mode": "joint"},
        {"same_view_negatives": True},
    ),
    "per_direction+doc_to_query": (
        {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"},
        {"symmetric": True},
    ),
}


@pytest.mark.backends("torch")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("columns", [0, 1, 2])
@pytest.mark.parametrize("variant", list(MNRL_VARIANTS))
def test_hard_negatives_against_mnrl(dtype, columns, variant):
    """``compute_loss_from_embeddings([q, k, n_1, ..., n_c], labels=None)`` (6.2's signature)
    is ``info_nce(q, k, concat([n_1, ..., n_c]), in_batch_negatives=True)``: every column's hard
    negatives in one shared (unpaired) block."""
    import torch

    q, k, _, paired = data(seed=6)
    hard = [paired[:, c] for c in range(columns)]
    kwargs, options = MNRL_VARIANTS[variant]
    peer = _mnrl(0.05, **kwargs)

    def ours(q, k, *hard):
        negatives = torch.cat(hard) if hard else None
        return infonce_xp.info_nce(
            q, k, negatives, temperature=0.05, in_batch_negatives=True, **options
        )

    agree(
        ours,
        lambda *embeddings: peer.compute_loss_from_embeddings(list(embeddings), None),
        [q, k, *hard],
        dtype,
        variant,
    )


# optax ------------------------------------------------------------------------------------


@pytest.mark.backends("jax")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("labels", ["lonely", "two-classes"])
def test_supervised_pairs_against_optax(dtype, labels):
    """``optax.ntxent(x, y, t)`` is ``supervised_info_nce(x, y, t, positives="pairs")`` on JAX
    arrays: value and ``jax.grad``."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax", reason="optax.ntxent is the JAX NT-Xent peer")
    jax.config.update("jax_enable_x64", True)
    x = jax.numpy.asarray(data(seed=7)[0].astype(dtype))
    y = jax.numpy.asarray(LONELY if labels == "lonely" else np.arange(10) % 2)
    for t in (0.1, 0.5):
        got, got_grad = jax.value_and_grad(
            lambda v, t=t: infonce_xp.supervised_info_nce(v, y, t, positives="pairs")
        )(x)
        want, want_grad = jax.value_and_grad(lambda v, t=t: optax.ntxent(v, y, t))(x)
        assert got.dtype == want.dtype == x.dtype
        np.testing.assert_allclose(float(got), float(want), **tol(dtype))
        np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), **tol(dtype))
