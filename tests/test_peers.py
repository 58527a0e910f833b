"""``infonce_xp.peers`` against the peers' own code: values and gradients, every backend.

pytorch-metric-learning, sentence-transformers (torch) and optax (JAX) are installed in the
test environments and are called as they are; lightly and open_clip need a newer torch, and
are the ports of ``reference_peers.py``. Each class is called as its peer is, on the same
embeddings: float64 to 1e-10, float32 to 1e-5.
"""

from __future__ import annotations

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
