"""``infonce_xp.peers``' constructors, bad values, every sentence-transformers configuration,
the cached MNRL and ``jax.jit``: against the peers' own code where it is installed (see
``test_peers.py`` for the values and gradients of each class on every backend)."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

from infonce_xp.peers import lightly, open_clip, optax
from infonce_xp.peers import pytorch_metric_learning as pml
from infonce_xp.peers import sentence_transformers as st
from test_peers import F64, ST_VARIANTS, _pml, _st


@pytest.mark.backends("torch")
@pytest.mark.parametrize("variant", ["query_to_doc", "joint, all four (GTE)", "hardness hard"])
def test_cached_mnrl_is_the_uncached_peer(variant):
    """The cached loss (micro-batches of 3 out of 10 rows, 2 hard-negative columns) gives the
    loss and the parameters' gradients of sentence-transformers' own uncached loss."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh()).double()
    inputs = tuple(torch.randn(4, 10, 6, dtype=torch.float64))

    def encode(batch):
        return tuple(model(x) for x in batch)

    kwargs = ST_VARIANTS[variant]
    cached = st.CachedMultipleNegativesRankingLoss(12.0, 3, **kwargs)
    loss = cached(encode, inputs)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = _st(scale=12.0, **kwargs).compute_loss_from_embeddings(list(encode(inputs)), None)
    want.backward()
    assert not loss.requires_grad
    np.testing.assert_allclose(loss.numpy(), want.detach().numpy(), **F64)
    for a, p in zip(got, model.parameters()):
        np.testing.assert_allclose(a.numpy(), p.grad.numpy(), **F64)


# The constructors ------------------------------------------------------------------------

LEFT_OUT = {
    "model",
    "guide",
    "similarity_fct",
    "cache_labels",
    "use_horovod",
    "memory_bank_size",
    "mini_batch_num_tokens",
    "show_progress_bar",
}


def _parameters(f: Any) -> list[tuple[str, Any]]:
    params = inspect.signature(f).parameters.values()
    return [
        (p.name, p.default)
        for p in params
        if p.name not in LEFT_OUT and p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"
    ]


def test_constructors_mirror_the_installed_peers():
    losses = _pml()
    for name in ("NTXentLoss", "SupConLoss"):
        assert _parameters(getattr(pml, name)) == _parameters(getattr(losses, name))
    assert _parameters(pml.SelfSupervisedLoss) == _parameters(losses.SelfSupervisedLoss)
    peer = type(_st())
    assert _parameters(st.MultipleNegativesRankingLoss) == _parameters(peer)
    assert _parameters(st.MultipleNegativesRankingLoss.compute_loss_from_embeddings) == (
        _parameters(peer.compute_loss_from_embeddings)
    )


def test_constructors_mirror_the_ported_peers():
    """lightly 1.5's and open_clip 3.x's parameters (from their source), less the left-out."""
    assert _parameters(lightly.NTXentLoss) == [("temperature", 0.5), ("gather_distributed", False)]
    assert _parameters(lightly.DCLLoss) == [("temperature", 0.1), ("gather_distributed", False)]
    assert _parameters(lightly.DCLWLoss) == [
        ("temperature", 0.1),
        ("sigma", 0.5),
        ("gather_distributed", False),
    ]
    assert _parameters(open_clip.ClipLoss) == [
        ("local_loss", False),
        ("gather_with_grad", False),
        ("rank", 0),
        ("world_size", 1),
    ]
    from sentence_transformers.sentence_transformer.losses import (
        cached_multiple_negatives_ranking,
        gist_embed,
    )

    assert _parameters(st.GISTEmbedLoss) == _parameters(gist_embed.GISTEmbedLoss)
    cached = cached_multiple_negatives_ranking.CachedMultipleNegativesRankingLoss
    assert _parameters(st.CachedMultipleNegativesRankingLoss) == _parameters(cached)
    empty = inspect.Parameter.empty
    assert _parameters(optax.ntxent) == [
        ("embeddings", empty),
        ("labels", empty),
        ("temperature", 0.07),
    ]


# Bad values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "names"),
    [
        (lambda: st.MultipleNegativesRankingLoss(scale=0.0), ValueError, "scale"),
        (lambda: st.MultipleNegativesRankingLoss(directions=()), ValueError, "directions"),
        (
            lambda: st.MultipleNegativesRankingLoss(directions=("doc_to_query",)),
            ValueError,
            "query_to_doc",
        ),
        (
            lambda: st.MultipleNegativesRankingLoss(directions=("query_to_doc", "up")),
            ValueError,
            "directions",
        ),
        (
            lambda: st.MultipleNegativesRankingLoss(
                directions=("query_to_doc", "query_to_query"), partition_mode="per_direction"
            ),
            ValueError,
            "per_direction",
        ),
        (
            lambda: st.MultipleNegativesRankingLoss(partition_mode="both"),
            ValueError,
            "partition_mode",
        ),
        (
            lambda: st.MultipleNegativesRankingLoss(hardness_mode="hard"),
            ValueError,
            "hardness_mode",
        ),
        (
            lambda: st.MultipleNegativesRankingLoss(hardness_strength=-1.0),
            ValueError,
            "hardness_strength",
        ),
        (
            lambda: st.MultipleNegativesRankingLoss(gather_across_devices=1),
            TypeError,
            "gather_across_devices",
        ),
        (lambda: pml.NTXentLoss(temperature=-1.0), ValueError, "temperature"),
        (lambda: pml.SelfSupervisedLoss(object()), TypeError, "loss"),
        (lambda: lightly.NTXentLoss(temperature=0.0), ValueError, "temperature"),
        (lambda: lightly.NTXentLoss(gather_distributed="yes"), TypeError, "gather_distributed"),
        (lambda: open_clip.ClipLoss(local_loss=1), TypeError, "local_loss"),
    ],
)
def test_bad_constructor_values_name_the_argument(make, error, names):
    with pytest.raises(error, match=names):
        make()


def test_bad_call_values_name_the_argument():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2, 6, 4))
    with pytest.raises(ValueError, match="labels"):
        pml.NTXentLoss()(x)
    for name, kwargs in (
        ("indices_tuple", {"indices_tuple": (1,)}),
        ("ref_emb and ref_labels", {"ref_emb": y}),
        ("ref_emb and ref_labels", {"ref_labels": np.arange(6)}),
    ):
        with pytest.raises(ValueError, match=name):
            pml.SupConLoss()(x, np.arange(6), **kwargs)
    with pytest.raises(ValueError, match=r"negatives\[1\]"):
        st.MultipleNegativesRankingLoss()(x, y, y, y[:3])
    with pytest.raises(ValueError, match="logit_scale"):
        open_clip.ClipLoss()(x, y, 0.0)
    with pytest.raises(ValueError, match="embeddings"):
        st.MultipleNegativesRankingLoss().compute_loss_from_embeddings([x], None)
    with pytest.raises(TypeError, match="torch tensors"):
        lightly.NTXentLoss(gather_distributed=True)(x, y)


def test_open_clip_several_processes_need_a_process_group():
    x, y = np.random.default_rng(4).normal(size=(2, 4, 3))
    torch = pytest.importorskip("torch")
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    loss = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, rank=0, world_size=2)
    with pytest.raises(RuntimeError, match="initialised process group"):
        loss(torch.tensor(x), torch.tensor(y), 10.0)
    for rank, world in ((2, 2), (-1, 2)):
        with pytest.raises(ValueError, match="rank must be in"):
            open_clip.ClipLoss(rank=rank, world_size=world)
    with pytest.raises(TypeError, match="world_size must be an int"):
        open_clip.ClipLoss(world_size=2.0)


def _st_combinations():
    import itertools

    others = ("query_to_query", "doc_to_query", "doc_to_doc")
    for r in range(4):
        for extra in itertools.combinations(others, r):
            for partition in ("joint", "per_direction"):
                for hardness in (None, "in_batch_negatives", "hard_negatives", "all_negatives"):
                    yield ("query_to_doc", *extra), partition, hardness


@pytest.mark.backends("torch")
@pytest.mark.parametrize(("directions", "partition", "hardness"), list(_st_combinations()))
def test_every_st_combination(directions, partition, hardness):
    """Every ``directions`` x ``partition_mode`` x ``hardness_mode`` of sentence-transformers,
    with 0, 1 and 2 negative columns: its numbers and gradients, or its refusal."""
    torch = pytest.importorskip("torch")
    kwargs = {"directions": directions, "partition_mode": partition}
    kwargs |= {"hardness_mode": hardness, "hardness_strength": 3.0 if hardness else 0.0}
    try:
        peer = _st(scale=15.0, **kwargs)
    except ValueError:
        with pytest.raises(ValueError, match="partition_mode"):
            st.MultipleNegativesRankingLoss(15.0, **kwargs)
        return
    ours = st.MultipleNegativesRankingLoss(15.0, **kwargs)
    rng = np.random.default_rng(11)
    for columns in (0, 1, 2):
        arrays = list(rng.normal(size=(2 + columns, 6, 5)))
        results = []
        for fn in (ours, lambda *e: peer.compute_loss_from_embeddings(list(e), None)):
            leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
            loss = fn(*leaves)
            loss.backward()
            results.append((loss.detach().numpy(), [leaf.grad.numpy() for leaf in leaves]))
        (got, got_grads), (want, want_grads) = results
        np.testing.assert_allclose(got, want, **F64, err_msg=f"{columns} columns")
        for a, b in zip(got_grads, want_grads):
            np.testing.assert_allclose(a, b, **F64, err_msg=f"{columns} columns")


@pytest.mark.backends("jax")
def test_peer_classes_under_jax_jit():
    """A peer class is a core call: it traces under ``jax.jit`` and gives the eager numbers."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(12)
    a, p, n = (jax.numpy.asarray(x) for x in rng.normal(size=(3, 8, 5)))
    y = jax.numpy.asarray(np.arange(8) % 3)
    for loss, args in (
        (lightly.DCLWLoss(0.2), (a, p)),
        (
            st.MultipleNegativesRankingLoss(hardness_mode="hard_negatives", hardness_strength=2.0),
            (a, p, n),
        ),
        (lambda *e: st.GISTEmbedLoss(margin=0.1)(e, e), (a, p)),
        (lambda v, t: pml.SupConLoss(0.2)(v, y, ref_emb=t, ref_labels=y), (a, p)),
        (lambda i, t: open_clip.ClipLoss()(i, t, 10.0), (a, p)),
    ):
        np.testing.assert_allclose(jax.jit(loss)(*args), loss(*args), rtol=1e-12)
