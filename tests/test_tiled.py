"""chunk_size: the streamed forward and backward equal the all-at-once path on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from infonce_xp import info_nce, info_nce_value_and_grad

CASES = [
    ("in-batch", {}),
    ("symmetric", {"symmetric": True}),
    ("unpaired", {}),
    ("paired", {"negative_mode": "paired"}),
    ("unnormalised", {"normalize": False}),
]


def _problem(mode, n=11, m=7, d=5, seed=0):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, n, d))
    neg = {"unpaired": rng.normal(size=(m, d)), "paired": rng.normal(size=(n, m, d))}.get(mode)
    return q, k, neg


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 11, 64])
@pytest.mark.parametrize("name, options", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiled_equals_untiled(backend, chunk_size, name, options, dtype):
    q, k, neg = _problem(name)
    args = backend.asarrays(q, k, neg, dtype=dtype)
    t = backend.asarray(np.asarray(0.2, dtype=dtype))
    go = backend.asarray(np.random.default_rng(1).normal(size=len(q)).astype(dtype))
    common = {"temperature": t, "reduction": "none", "grad_output": go, **options}
    loss, grads = info_nce_value_and_grad(*args, **common)
    tiled_loss, tiled_grads = info_nce_value_and_grad(*args, chunk_size=chunk_size, **common)
    rtol, atol = (1e-5, 1e-6) if dtype == "float32" else (1e-12, 1e-13)
    backend.assert_close(tiled_loss, loss, rtol=rtol, atol=atol)
    for a, b in zip(tiled_grads, grads):
        if b is not None:
            backend.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_tiled_reductions(backend, reduction):
    q, k, neg = _problem("unpaired", n=9, m=13)
    args = backend.asarrays(q, k, neg)
    backend.assert_close(
        info_nce(*args, reduction=reduction, chunk_size=4),
        info_nce(*args, reduction=reduction),
        rtol=1e-12,
    )


@pytest.mark.backends("torch")
def test_torch_tiled_autograd_matches_untiled():
    import torch

    from infonce_xp.torch import InfoNCE

    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 37, 16, generator=gen, dtype=torch.float64)
    results = []
    for chunk_size in (None, 8):
        loss_fn = InfoNCE(learn_temperature=True, symmetric=True, chunk_size=chunk_size).double()
        leaves = [q.clone().requires_grad_(), k.clone().requires_grad_()]
        loss = loss_fn(*leaves)
        loss.backward()
        results.append((loss, leaves[0].grad, leaves[1].grad, loss_fn.log_inverse_temperature.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.backends("jax")
def test_jax_trace_does_not_grow_with_the_number_of_tiles():
    import jax
    import jax.numpy as jnp

    def size(n):
        q = jnp.ones((n, 8), dtype=jnp.float32)
        f = jax.grad(lambda q: info_nce(q, q * 2, chunk_size=4, symmetric=True))
        eqns = jax.make_jaxpr(f)(q).jaxpr.eqns
        assert any(e.primitive.name == "scan" for e in eqns)
        return len(eqns)

    assert size(16) == size(1024)  # 4 tiles or 256 tiles: one lax.scan body either way


# A chunk_size beyond the batch: tiles of at most the rows there are, on each axis -----------


class _OneWorker:
    """The gather protocol for a single worker (as in ``test_distributed.py``)."""

    def __call__(self, x):
        return x

    def rank(self):
        return 0

    def scatter(self, grad):
        return grad


# name: (negatives, options); "labels" / "negative_labels" stand for arrays drawn per call
BEYOND_CASES = {
    "in-batch": (None, {}),
    "symmetric": (None, {"symmetric": True}),
    "unpaired": ("unpaired", {}),
    "paired": ("paired", {"negative_mode": "paired"}),
    "labels-own": (None, {"labels": True}),
    "labels-supcon-symmetric": (None, {"labels": True, "positives": "supcon", "symmetric": True}),
    "labels-pairs-same-view": (
        None,
        {"labels": True, "positives": "pairs", "same_view_negatives": True},
    ),
    "in-batch+paired-labelled": (
        "paired",
        {
            "negative_mode": "paired",
            "in_batch_negatives": True,
            "labels": True,
            "negative_labels": True,
            "positives": "supcon",
        },
    ),
    "in-batch+unpaired-labelled": (
        "unpaired",
        {"in_batch_negatives": True, "labels": True, "negative_labels": True},
    ),
    "gather": (None, {"gather": True, "symmetric": True}),
    "gather-labels": (None, {"gather": True, "labels": True, "positives": "pairs"}),
}


def _beyond_call(backend, name, chunk_size, n=8, m=3, d=5):
    """Loss rows and gradients of one case of ``BEYOND_CASES`` at ``chunk_size``."""
    rng = np.random.default_rng(4)
    kind, options = BEYOND_CASES[name]
    options = dict(options)
    q, k = rng.normal(size=(2, n, d))
    neg = {"unpaired": rng.normal(size=(m, d)), "paired": rng.normal(size=(n, m, d))}.get(kind)
    if options.pop("labels", False):
        options["labels"] = backend.asarray(rng.integers(0, 3, size=n))
    if options.pop("negative_labels", False):
        shape = (m,) if kind == "unpaired" else (n, m)
        options["negative_labels"] = backend.asarray(rng.integers(0, 3, size=shape))
    if options.pop("gather", False):
        options["gather"] = _OneWorker()
    return info_nce_value_and_grad(
        *backend.asarrays(q, k, neg),
        temperature=backend.asarray(np.asarray(0.2)),
        reduction="none",
        grad_output=backend.asarray(rng.normal(size=n)),
        chunk_size=chunk_size,
        **options,
    )


def _assert_same(backend, got, want, **tol):
    backend.assert_close(got[0], want[0], **tol)
    for a, b in zip(got[1], want[1]):
        assert (a is None) == (b is None)
        if b is not None:
            backend.assert_close(a, b, **tol)


@pytest.mark.parametrize("name", list(BEYOND_CASES))
def test_chunk_beyond_the_batch_equals_the_batch(backend, name):
    """A chunk_size is a cap: beyond N (or M) it tiles as chunk_size=N, which equals dense.
    Before, every tile was padded to chunk x chunk (2**62 overflowed, 65536 allocated 17 GB)."""
    dense, whole = _beyond_call(backend, name, None), _beyond_call(backend, name, 8)
    _assert_same(backend, whole, dense, rtol=1e-12, atol=1e-13)
    for chunk_size in (4096, 65536, 2**62):
        _assert_same(
            backend, _beyond_call(backend, name, chunk_size), whole, rtol=1e-12, atol=1e-13
        )


@pytest.mark.parametrize("positives", ["supcon", "pairs"])
def test_supervised_chunk_beyond_the_batch(backend, positives):
    from infonce_xp import supervised_info_nce

    rng = np.random.default_rng(6)
    x, y = backend.asarray(rng.normal(size=(8, 5))), backend.asarray(rng.integers(0, 3, 8))
    dense = supervised_info_nce(x, y, 0.2, "none", positives=positives)
    for chunk_size in (8, 4096, 65536, 2**62):
        got = supervised_info_nce(x, y, 0.2, "none", positives=positives, chunk_size=chunk_size)
        backend.assert_close(got, dense, rtol=1e-12, atol=1e-13)


@pytest.mark.backends("numpy")
@pytest.mark.parametrize("name", list(BEYOND_CASES))
def test_tiles_have_at_most_the_rows_there_are(monkeypatch, backend, name):
    """What the tiled loops see (a spy on the block split of both tiled modules): no tile is
    longer than its axis, so a chunk_size of 65536 at N=8 costs what chunk_size=8 does."""
    from infonce_xp import _tiled

    seen = []
    split = _tiled.blocks

    def spy(xp, x, chunk):
        out = split(xp, x, chunk)
        seen.append((x.shape[0], out.shape))
        return out

    monkeypatch.setattr(_tiled, "blocks", spy)
    _beyond_call(backend, name, 65536)
    assert seen
    for rows, shape in seen:
        assert shape[:2] == (1, rows), (rows, shape)


# No negatives (M = 0): tiled equals dense, in every combination ------------------------------

EMPTY_CASES = {
    "unpaired": ("unpaired", {}),
    "paired": ("paired", {"negative_mode": "paired"}),
    "unpaired+in-batch": ("unpaired", {"in_batch_negatives": True}),
    "paired+in-batch": ("paired", {"negative_mode": "paired", "in_batch_negatives": True}),
    "paired+in-batch+symmetric": (
        "paired",
        {"negative_mode": "paired", "in_batch_negatives": True, "symmetric": True},
    ),
    "unpaired+in-batch+symmetric": ("unpaired", {"in_batch_negatives": True, "symmetric": True}),
    "paired+labels": ("paired", {"negative_mode": "paired", "labels": True}),
    "unpaired+labels": ("unpaired", {"labels": True, "negative_labels": True}),
    "paired+in-batch+labels": (
        "paired",
        {
            "negative_mode": "paired",
            "in_batch_negatives": True,
            "labels": True,
            "negative_labels": True,
        },
    ),
    "unpaired+in-batch+labels+symmetric": (
        "unpaired",
        {"in_batch_negatives": True, "labels": True, "symmetric": True},
    ),
    "paired+in-batch+same-view": (
        "paired",
        {"negative_mode": "paired", "in_batch_negatives": True, "same_view_negatives": True},
    ),
}


def _empty_call(backend, name, positives, chunk_size, n=7, d=5):
    rng = np.random.default_rng(2)
    kind, options = EMPTY_CASES[name]
    options = dict(options)
    q, k = rng.normal(size=(2, n, d))
    neg = np.zeros((0, d)) if kind == "unpaired" else np.zeros((n, 0, d))
    if options.pop("labels", False):
        options["labels"] = backend.asarray(rng.integers(0, 3, size=n))
    if options.pop("negative_labels", False):
        shape = (0,) if kind == "unpaired" else (n, 0)
        options["negative_labels"] = backend.asarray(np.zeros(shape, dtype=np.int64))
    return info_nce_value_and_grad(
        *backend.asarrays(q, k, neg),
        temperature=backend.asarray(np.asarray(0.2)),
        reduction="none",
        grad_output=backend.asarray(rng.normal(size=n)),
        positives=positives,
        chunk_size=chunk_size,
        **options,
    )


@pytest.mark.parametrize("positives", ["own", "supcon", "pairs"])
@pytest.mark.parametrize("name", list(EMPTY_CASES))
def test_no_negatives_tiled_equals_dense(backend, name, positives):
    """M = 0: paired (N, 0, D) or unpaired (0, D), with and without in-batch negatives, labels,
    symmetric. Paired with in-batch negatives used to crash in the tiled split (a reshape of
    size 0)."""
    want = _empty_call(backend, name, positives, None)
    for chunk_size in (3, 64):  # tiles with padding; one tile (64 is beyond N)
        got = _empty_call(backend, name, positives, chunk_size)
        _assert_same(backend, got, want, rtol=1e-12, atol=1e-13)


# Gradients accumulated in place (large problems on writeable libraries) -----------------------


@pytest.fixture
def always_in_place(monkeypatch):
    """Accumulate every tiled gradient in place where the library can, however small."""
    from infonce_xp import _tiled

    monkeypatch.setattr(_tiled, "IN_PLACE_FROM", 0)


@pytest.mark.parametrize("name", list(BEYOND_CASES))
def test_gradients_accumulated_in_place_equal_dense(backend, always_in_place, name):
    """The in-place accumulation of the tiled backward (what keeps the resident size of large
    calls down) gives the dense numbers; libraries that cannot write sum as before."""
    _assert_same(
        backend,
        _beyond_call(backend, name, 3),
        _beyond_call(backend, name, None),
        rtol=1e-12,
        atol=1e-13,
    )


@pytest.mark.backends("torch")
@pytest.mark.parametrize("labels", [False, True])
def test_in_place_under_torch_autograd_compile_and_func(always_in_place, labels):
    """Where autograd records (double backward) or a transform watches, nothing is written in
    place; compiled, the writes trace."""
    import torch

    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 10, 4, generator=gen, dtype=torch.float64)
    options = {"chunk_size": 3, "symmetric": True}
    if labels:
        options |= {"labels": torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 2, 1]), "positives": "supcon"}

    def f(q, k):
        return info_nce(q, k, **options)

    leaves = (q.clone().requires_grad_(), k.clone().requires_grad_())
    torch.autograd.gradgradcheck(f, leaves)
    grads = torch.func.grad(f, argnums=(0, 1))(q, k)
    compiled = torch.compile(torch.func.grad(f, argnums=(0, 1)), fullgraph=True, backend="eager")
    eager = torch.autograd.grad(f(*leaves), leaves)
    for got in (grads, compiled(q, k)):
        for a, b in zip(got, eager):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    compiled_loss = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves2 = (q.clone().requires_grad_(), k.clone().requires_grad_())
    for a, b in zip(torch.autograd.grad(compiled_loss(*leaves2), leaves2), eager):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
