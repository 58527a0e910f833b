"""``infonce_xp.peers`` against the peers' own code: values and gradients, every backend.

pytorch-metric-learning, sentence-transformers (torch) and optax (JAX) are installed in the
test environments and are called as they are; lightly and open_clip need a newer torch, and
are the ports of ``reference_peers.py``. Each class is called as its peer is, on the same
embeddings: float64 to 1e-10, float32 to 1e-5.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from infonce_xp.peers import lightly, open_clip, optax
from infonce_xp.peers import pytorch_metric_learning as pml
from infonce_xp.peers import sentence_transformers as st
from reference_peers import lightly_dcl, lightly_ntxent, open_clip_loss

F64 = {"rtol": 1e-10, "atol": 1e-10}
F32 = {"rtol": 1e-5, "atol": 1e-5}
LABELS = np.array([0, 1, 0, 2, 1, 0, 3, 2, 1, 0])  # class 3 alone: a row without a positive


def _pml() -> Any:
    return pytest.importorskip("pytorch_metric_learning.losses", reason="the pml peer")


def _st(**kwargs: Any) -> Any:
    torch = pytest.importorskip("torch")
    losses = pytest.importorskip("sentence_transformers.losses", reason="the ST peer")
    return losses.MultipleNegativesRankingLoss(torch.nn.Module(), **kwargs)


def _torch_labels(y: np.ndarray) -> Any:
    import torch

    return torch.asarray(y.astype(np.int64))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


ST_VARIANTS = {
    "query_to_doc": {},
    "hardness in-batch": {"hardness_mode": "in_batch_negatives", "hardness_strength": 5.0},
    "hardness hard": {"hardness_mode": "hard_negatives", "hardness_strength": 5.0},
    "hardness all+query_to_query": {
        "directions": ("query_to_doc", "query_to_query"),
        "hardness_mode": "all_negatives",
        "hardness_strength": 2.0,
    },
    "joint+query_to_query": {
        "directions": ("query_to_doc", "query_to_query"),
        "partition_mode": "joint",
    },
    "per_direction+doc_to_query": {
        "directions": ("query_to_doc", "doc_to_query"),
        "partition_mode": "per_direction",
    },
    "joint+doc_to_query": {"directions": ("query_to_doc", "doc_to_query")},
    "joint+doc_to_doc+hardness": {
        "directions": ("query_to_doc", "doc_to_doc"),
        "hardness_mode": "hard_negatives",
        "hardness_strength": 3.0,
    },
    "joint, all four (GTE)": {
        "directions": ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"),
    },
}


def _st_gist(*guide: Any, **kwargs: Any) -> Any:
    """sentence-transformers' own GISTEmbedLoss.forward on given embeddings: its model and
    guide model (which only embed the columns) are stood in for by the embeddings."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers", reason="the ST peer")
    from sentence_transformers.sentence_transformer.losses import gist_embed

    def loss(*embeddings: Any) -> Any:
        peer = gist_embed.GISTEmbedLoss.__new__(gist_embed.GISTEmbedLoss)
        torch.nn.Module.__init__(peer)
        peer.model = peer.guide = None
        peer.must_retokenize, peer.gather_across_devices = False, False
        peer.similarity_fct = torch.nn.CosineSimilarity(dim=-1)
        peer.cross_entropy_loss = torch.nn.CrossEntropyLoss()
        for name, value in kwargs.items():
            setattr(peer, name, value)
        columns = iter([list(embeddings), [torch.asarray(g) for g in guide]])
        embed = gist_embed.embed_columns
        gist_embed.embed_columns = lambda model, features: next(columns)
        try:
            return peer.forward([{}] * len(embeddings), None)
        finally:
            gist_embed.embed_columns = embed

    return loss


def cases() -> dict[str, tuple[Callable[..., Any], Callable[..., Any], list[np.ndarray]]]:
    """Name: (ours on arrays of any backend, the peer on torch tensors, the float inputs).
    Labels are fixed NumPy arrays, converted inside."""
    rng = np.random.default_rng(0)
    x, z0, z1, a, p = rng.normal(size=(5, 10, 6))
    hard = list(rng.normal(size=(2, 10, 6)))
    out: dict[str, Any] = {}

    def labels_like(v: Any) -> Any:
        from infonce_xp._namespaces import array_namespace

        return array_namespace(v).asarray(LABELS)

    for name, t in (("NTXentLoss", 0.2), ("SupConLoss", 0.3)):
        out[f"pml.{name}"] = (
            lambda v, name=name, t=t: getattr(pml, name)(t)(v, labels_like(v)),
            lambda v, name=name, t=t: getattr(_pml(), name)(t)(v, _torch_labels(LABELS)),
            [x],
        )
    refs_labels = np.array([0, 3, 1, 0, 2, 4, 1])  # class 4: only a reference; 3: alone
    for name, t in (("NTXentLoss", 0.2), ("SupConLoss", 0.3)):
        out[f"pml.{name}(ref_emb)"] = (
            lambda v, r, name=name, t=t: getattr(pml, name)(t)(
                v, labels_like(v), ref_emb=r, ref_labels=_on(v, refs_labels)
            ),
            lambda v, r, name=name, t=t: getattr(_pml(), name)(t)(
                v, _torch_labels(LABELS), ref_emb=r, ref_labels=_torch_labels(refs_labels)
            ),
            [x, z0[:7] + 0.3 * x[:7]],
        )
    for symmetric in (True, False):
        out[f"pml.SelfSupervisedLoss(symmetric={symmetric})"] = (
            lambda u, v, s=symmetric: pml.SelfSupervisedLoss(pml.NTXentLoss(0.3), s)(u, v),
            lambda u, v, s=symmetric: _pml().SelfSupervisedLoss(_pml().NTXentLoss(0.3), s)(u, v),
            [z0, z1],
        )
    out["lightly.NTXentLoss"] = (
        lambda u, v: lightly.NTXentLoss(0.4)(u, v),
        lambda u, v: lightly_ntxent(u, v, 0.4),
        [z0, z1],
    )
    out["lightly.DCLLoss"] = (
        lambda u, v: lightly.DCLLoss(0.2)(u, v),
        lambda u, v: lightly_dcl(u, v, 0.2),
        [z0, z1],
    )
    out["lightly.DCLWLoss"] = (
        lambda u, v: lightly.DCLWLoss(0.2, sigma=0.7)(u, v),
        lambda u, v: lightly_dcl(u, v, 0.2, 0.7),
        [z0, z1],
    )
    out["open_clip.ClipLoss"] = (
        lambda i, t, s: open_clip.ClipLoss()(i, t, s),
        open_clip_loss,
        [_unit(z0), _unit(z1), np.array(14.0)],
    )
    for variant, kwargs in ST_VARIANTS.items():
        for columns in (0, 1, 2):
            out[f"st.MNRL({variant}, {columns} columns)"] = (
                lambda *e, kw=kwargs: st.MultipleNegativesRankingLoss(12.0, **kw)(*e),
                lambda *e, kw=kwargs: _st(scale=12.0, **kw).compute_loss_from_embeddings(
                    list(e), None
                ),
                [a, p, *hard[:columns]],
            )
    guides = list(rng.normal(size=(3, 10, 4)))
    for strategy, margin, ca, cp, columns in (
        ("absolute", 0.0, True, True, 1),
        ("absolute", 0.1, False, True, 0),
        ("relative", 0.05, True, False, 1),
    ):
        settings = {
            "temperature": 0.05,
            "margin_strategy": strategy,
            "margin": margin,
            "contrast_anchors": ca,
            "contrast_positives": cp,
        }
        g = guides[: 2 + columns]
        out[f"st.GISTEmbedLoss({strategy}, {margin}, {ca}, {cp}, {columns} columns)"] = (
            lambda *e, s=settings, g=g: st.GISTEmbedLoss(**s)(e, _like(e[0], g)),
            lambda *e, s=settings, g=g: _st_gist(*g, **s)(*e),
            [a, p + 0.5 * a, *hard[:columns]],
        )
    return out


def _on(x: Any, labels: np.ndarray) -> Any:
    """Integer labels as an array of ``x``'s library."""
    from infonce_xp._namespaces import array_namespace

    return array_namespace(x).asarray(labels)


def _like(x: Any, arrays: list[np.ndarray]) -> tuple[Any, ...]:
    """NumPy arrays as arrays of ``x``'s library (a guide is data, like labels)."""
    from infonce_xp._namespaces import array_namespace

    xp = array_namespace(x)
    return tuple(xp.asarray(a.astype(np.float64)) for a in arrays)


CASES = cases()


def peer_value_and_grads(name: str, arrays: list[np.ndarray], dtype: str) -> tuple[Any, list[Any]]:
    torch = pytest.importorskip("torch")
    leaves = [torch.tensor(v.astype(dtype), requires_grad=True) for v in arrays]
    loss = CASES[name][1](*leaves)
    loss.backward()
    return loss.detach().numpy(), [leaf.grad.numpy() for leaf in leaves]


@pytest.mark.backends("torch")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
def test_torch_values_and_gradients_are_the_peers(name, dtype):
    torch = pytest.importorskip("torch")
    ours, _, arrays = CASES[name]
    want, want_grads = peer_value_and_grads(name, arrays, dtype)
    leaves = [torch.tensor(v.astype(dtype), requires_grad=True) for v in arrays]
    loss = ours(*leaves)
    assert isinstance(loss, torch.Tensor) and loss.dtype == getattr(torch, dtype)
    loss.backward()
    tol = F64 if dtype == "float64" else F32
    np.testing.assert_allclose(loss.detach().numpy(), want, **tol, err_msg=name)
    for i, (leaf, g) in enumerate(zip(leaves, want_grads)):
        np.testing.assert_allclose(leaf.grad.numpy(), g, **tol, err_msg=f"{name}: input {i}")


@pytest.mark.parametrize("name", list(CASES))
def test_every_backend_gives_the_peers_value(backend, name):
    """The peer classes take the arrays of any library and return one of it (float64)."""
    ours, _, arrays = CASES[name]
    want, want_grads = peer_value_and_grads(name, arrays, "float64")
    inputs = backend.asarrays(*arrays, dtype="float64")
    backend.assert_close(ours(*inputs), want, **F64, err_msg=name)
    if backend.name == "jax":
        import jax

        grads = jax.grad(lambda *v: ours(*v), argnums=tuple(range(len(inputs))))(*inputs)
        for i, (g, w) in enumerate(zip(grads, want_grads)):
            np.testing.assert_allclose(np.asarray(g), w, **F64, err_msg=f"{name}: input {i}")


@pytest.mark.backends("jax")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_optax_ntxent_is_optax(dtype):
    jax = pytest.importorskip("jax")
    real = pytest.importorskip("optax", reason="optax.ntxent is the peer")
    jax.config.update("jax_enable_x64", True)
    x = jax.numpy.asarray(np.random.default_rng(1).normal(size=(10, 6)).astype(dtype))
    y = jax.numpy.asarray(LABELS)
    tol = F64 if dtype == "float64" else F32
    for t in (0.07, 0.5):
        got, got_grad = jax.jit(jax.value_and_grad(lambda v, t=t: optax.ntxent(v, y, t)))(x)
        want, want_grad = jax.value_and_grad(lambda v, t=t: real.ntxent(v, y, t))(x)
        assert got.dtype == want.dtype
        np.testing.assert_allclose(float(got), float(want), **tol)
        np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), **tol)


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


def test_tiles_change_nothing():
    rng = np.random.default_rng(2)
    a, p, n = rng.normal(size=(3, 9, 5))
    for dense, tiled in (
        (st.MultipleNegativesRankingLoss(), st.MultipleNegativesRankingLoss(chunk_size=4)),
        (pml.SupConLoss(), pml.SupConLoss(chunk_size=4)),
        (lightly.NTXentLoss(), lightly.NTXentLoss(chunk_size=4)),
    ):
        args = (a, np.arange(9) % 3) if isinstance(dense, pml.SupConLoss) else (a, p, n)
        args = args[:2] if isinstance(dense, lightly.NTXentLoss) else args
        np.testing.assert_allclose(tiled(*args), dense(*args), rtol=1e-12)


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
