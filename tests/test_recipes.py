"""The recipes (labels, hard negatives, same-view negatives, supervised) on every backend, against
the float64 reference of ``reference_recipes.py`` (itself checked against the peers).

The new names are looked up on ``infonce_xp`` inside the tests, so that until the feature lands
each test fails on its own and the rest of the suite still collects.
"""

from __future__ import annotations

import numpy as np
import pytest

import infonce_xp
from reference import finite_difference, seed
from reference_recipes import recipe_loss, supervised_loss

N, M, D, T = 7, 4, 5, 0.3
F64 = {"rtol": 1e-10, "atol": 1e-10}
F32 = {"rtol": 1e-5, "atol": 1e-5}
TILED = {"rtol": 1e-12, "atol": 1e-12}
POSITIVES = ("own", "supcon", "pairs")
LABELS = {
    "collide": np.array([0, 1, 0, 2, 1, 0, 3]),  # duplicates, and class 3 alone
    "distinct": np.arange(N),
    "one-class": np.zeros(N, dtype=np.int64),
}
# name: (negatives, options); "negative_labels" is replaced by the labels of the negatives
CASES = {
    "in-batch": (None, {}),
    "unpaired": ("unpaired", {}),
    "paired": ("paired", {"negative_mode": "paired"}),
    "in-batch+unpaired": ("unpaired", {"in_batch_negatives": True}),
    "in-batch+paired": ("paired", {"in_batch_negatives": True, "negative_mode": "paired"}),
    "same-view": (None, {"same_view_negatives": True}),
    "same-view+symmetric": (None, {"same_view_negatives": True, "symmetric": True}),
    "symmetric": (None, {"symmetric": True}),
    "symmetric+negatives": ("unpaired", {"symmetric": True, "in_batch_negatives": True}),
    "unpaired+labelled": ("unpaired", {"negative_labels": True}),
    "in-batch+unpaired+labelled": (
        "unpaired",
        {"in_batch_negatives": True, "same_view_negatives": True, "negative_labels": True},
    ),
    "paired+labelled": ("paired", {"negative_mode": "paired", "negative_labels": True}),
}


def problem(case, labels="collide", n=N, seed=0):
    """NumPy arrays and options of one case: (q, k, negatives), the options with their labels."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, D))
    k = q + rng.normal(size=(n, D))
    kind, options = CASES[case]
    options = dict(options)
    neg = {"unpaired": rng.normal(size=(M, D)), "paired": rng.normal(size=(n, M, D))}.get(kind)
    if options.pop("negative_labels", False):
        shape = (M,) if kind == "unpaired" else (n, M)
        options["negative_labels"] = rng.integers(0, 3, size=shape)
    if labels is not None:
        options["labels"] = LABELS[labels][:n] if n <= N else rng.integers(0, 3, size=n)
    return (q, k, neg), options


def on(backend, options):
    """The options with their label arrays as arrays of ``backend``."""
    return {
        name: backend.asarray(v) if name in ("labels", "negative_labels") else v
        for name, v in options.items()
    }


def value_cases():
    for case, (_, options) in CASES.items():
        for labels in (*LABELS, None):
            if labels is None and "negative_labels" in options:
                continue  # negative_labels need labels: see test_bad_input
            yield case, labels


# Values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("case, labels", list(value_cases()))
def test_values_match_reference(backend, case, labels, positives):
    arrays, options = problem(case, labels)
    options |= {"positives": positives, "temperature": T}
    inputs = backend.asarrays(*arrays)
    for reduction in ("none", "mean", "sum"):
        got = infonce_xp.info_nce(*inputs, reduction=reduction, **on(backend, options))
        expected = recipe_loss(*arrays, reduction=reduction, **options)
        backend.assert_close(got, expected, **F64, err_msg=f"{case}, {reduction}")


@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("case", list(CASES))
def test_float32_values_match_reference(backend, case, positives):
    arrays, options = problem(case)
    options |= {"positives": positives, "temperature": T}
    got = infonce_xp.info_nce(
        *backend.asarrays(*arrays, dtype="float32"), reduction="none", **on(backend, options)
    )
    expected = recipe_loss(*arrays, reduction="none", **options)
    backend.assert_close(got, expected, **F32, dtype="float32")


@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("case", [c for c, (_, o) in CASES.items() if "negative_labels" not in o])
def test_distinct_labels_are_the_seed(backend, case, positives):
    """One id per row: nothing is same-class, every mode is the call without labels."""
    arrays, options = problem(case, labels="distinct")
    inputs = backend.asarrays(*arrays)
    plain = {n: v for n, v in options.items() if n != "labels"}
    for reduction in ("none", "mean"):
        got = infonce_xp.info_nce(
            *inputs, reduction=reduction, positives=positives, **on(backend, options)
        )
        backend.assert_close(got, infonce_xp.info_nce(*inputs, reduction=reduction, **plain), **F64)
    if case in ("in-batch", "unpaired", "paired"):  # the seed's own modes
        expected = seed(*arrays, T, "none", options.get("negative_mode", "unpaired"))
        got = infonce_xp.info_nce(*inputs, T, "none", positives=positives, **on(backend, options))
        backend.assert_close(got, expected, **F64)


def test_class_api_matches_function(backend):
    arrays, options = problem("in-batch+unpaired+labelled")
    constructor = {n: v for n, v in options.items() if n not in ("labels", "negative_labels")}
    data = {n: v for n, v in on(backend, options).items() if n in ("labels", "negative_labels")}
    inputs = backend.asarrays(*arrays)
    loss_fn = infonce_xp.InfoNCE(T, "none", positives="supcon", **constructor)
    expected = infonce_xp.info_nce(*inputs, T, "none", positives="supcon", **on(backend, options))
    backend.assert_close(loss_fn(*inputs, **data), expected, rtol=1e-15)


# Gradients ------------------------------------------------------------------------------

_FD_CACHE: dict = {}


def reference_gradients(case, positives, reduction, grad_output):
    """Finite differences of the reference (q, k, negatives, temperature); cached per case."""
    key = (case, positives, reduction)
    if key not in _FD_CACHE:
        (q, k, neg), options = problem(case, n=5)
        options["positives"] = positives

        def value(q, k, neg, t):
            loss = recipe_loss(q, k, neg, temperature=t, reduction=reduction, **options)
            return float(np.sum(grad_output * loss))

        _FD_CACHE[key] = [
            finite_difference(lambda x: value(x, k, neg, T), q),
            finite_difference(lambda x: value(q, x, neg, T), k),
            None if neg is None else finite_difference(lambda x: value(q, k, x, T), neg),
            finite_difference(lambda t: value(q, k, neg, float(t)), np.asarray(T)),
        ]
    return _FD_CACHE[key]


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("case", list(CASES))
def test_gradients_match_finite_differences(backend, case, positives, reduction):
    arrays, options = problem(case, n=5)
    grad_output = np.random.default_rng(3).normal(size=(5,) if reduction == "none" else ())
    loss, grads = infonce_xp.info_nce_value_and_grad(
        *backend.asarrays(*arrays),
        temperature=backend.asarray(np.asarray(T)),
        reduction=reduction,
        grad_output=backend.asarray(grad_output),
        positives=positives,
        **on(backend, options),
    )
    expected = recipe_loss(
        *arrays, temperature=T, reduction=reduction, positives=positives, **options
    )
    backend.assert_close(loss, expected, **F64)
    wanted = reference_gradients(case, positives, reduction, grad_output)
    for name, got, fd in zip(
        ("query", "positive_key", "negative_keys", "temperature"), grads, wanted
    ):
        if fd is None:
            assert got is None, name
        else:
            backend.assert_close(got, fd, rtol=1e-6, atol=1e-8, err_msg=name)


# Tiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("case", list(CASES))
def test_tiled_equals_untiled(backend, case, positives):
    arrays, options = problem(case)
    common = {
        "temperature": backend.asarray(np.asarray(T)),
        "reduction": "none",
        "grad_output": backend.asarray(np.random.default_rng(1).normal(size=N)),
        "positives": positives,
        **on(backend, options),
    }
    inputs = backend.asarrays(*arrays)
    loss, grads = infonce_xp.info_nce_value_and_grad(*inputs, **common)
    tiled_loss, tiled_grads = infonce_xp.info_nce_value_and_grad(*inputs, chunk_size=3, **common)
    backend.assert_close(tiled_loss, loss, **TILED)
    for a, b in zip(tiled_grads, grads):
        assert (a is None) == (b is None)
        if b is not None:
            backend.assert_close(a, b, **TILED)


# Supervised -----------------------------------------------------------------------------

SUPERVISED_LABELS = {
    "collide": np.array([0, 1, 0, 2, 1, 0, 3, 2]),  # class 3: a row without positive
    "lonely": np.arange(8),  # no row has a positive: 0, never NaN
    "one-class": np.zeros(8, dtype=np.int64),
}


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("positives", ["supcon", "pairs"])
@pytest.mark.parametrize("labels", list(SUPERVISED_LABELS))
def test_supervised_matches_reference(backend, labels, positives, reduction):
    x = np.random.default_rng(5).normal(size=(8, D))
    y = SUPERVISED_LABELS[labels]
    expected = supervised_loss(x, y, T, positives, reduction)
    inputs = backend.asarray(x), backend.asarray(y)
    options = {"reduction": reduction, "positives": positives}
    got = infonce_xp.supervised_info_nce(*inputs, T, **options)
    backend.assert_close(got, expected, **F64)
    backend.assert_close(infonce_xp.SupervisedInfoNCE(T, **options)(*inputs), expected, **F64)
    tiled = infonce_xp.supervised_info_nce(*inputs, T, chunk_size=3, **options)
    backend.assert_close(tiled, got, **TILED)
    got32 = infonce_xp.supervised_info_nce(backend.asarray(x, "float32"), inputs[1], T, **options)
    backend.assert_close(got32, expected, **F32, dtype="float32")


@pytest.mark.backends("torch")
@pytest.mark.parametrize("positives", ["supcon", "pairs"])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_supervised_torch_module_gradients(positives, chunk_size):
    import torch

    import infonce_xp.torch as itorch

    x = np.random.default_rng(6).normal(size=(8, D))
    y = SUPERVISED_LABELS["collide"]
    loss_fn = itorch.SupervisedInfoNCE(T, positives=positives, chunk_size=chunk_size)
    assert isinstance(loss_fn, torch.nn.Module)
    leaf = torch.tensor(x, requires_grad=True)
    loss = loss_fn(leaf, torch.asarray(y))
    loss.backward()
    expected = supervised_loss(x, y, T, positives)
    np.testing.assert_allclose(loss.item(), expected, **F64)
    fd = finite_difference(lambda v: float(supervised_loss(v, y, T, positives)), x)
    np.testing.assert_allclose(leaf.grad.numpy(), fd, rtol=1e-6, atol=1e-8)
    assert torch.isfinite(leaf.grad).all()


@pytest.mark.backends("jax")
@pytest.mark.parametrize("positives", ["supcon", "pairs"])
def test_supervised_jax_grad_and_jit(positives):
    import jax

    jax.config.update("jax_enable_x64", True)
    x = np.random.default_rng(7).normal(size=(8, D))
    y = SUPERVISED_LABELS["collide"]

    def loss(v, labels):
        return infonce_xp.supervised_info_nce(v, labels, T, positives=positives)

    value, grad = jax.jit(jax.value_and_grad(loss))(jax.numpy.asarray(x), jax.numpy.asarray(y))
    np.testing.assert_allclose(float(value), supervised_loss(x, y, T, positives), **F64)
    fd = finite_difference(lambda v: float(supervised_loss(v, y, T, positives)), x)
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.backends("torch")
def test_torch_info_nce_module_takes_labels():
    import torch

    import infonce_xp.torch as itorch

    (q, k, neg), options = problem("in-batch+unpaired+labelled")
    loss_fn = itorch.InfoNCE(
        T, positives="pairs", in_batch_negatives=True, same_view_negatives=True
    )
    leaves = [torch.tensor(a, requires_grad=True) for a in (q, k, neg)]
    loss = loss_fn(
        *leaves,
        labels=torch.asarray(options["labels"]),
        negative_labels=torch.asarray(options["negative_labels"]),
    )
    np.testing.assert_allclose(
        loss.item(), recipe_loss(q, k, neg, temperature=T, positives="pairs", **options), **F64
    )
    loss.backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves)


# Degenerate rows -------------------------------------------------------------------------


@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("case", ["in-batch", "same-view", "same-view+symmetric"])
def test_rows_with_every_other_candidate_ignored_are_finite(backend, case, positives):
    """All one class: "own" keeps only the positive (loss 0), "pairs" has no negative at all."""
    arrays, options = problem(case, labels="one-class")
    loss, grads = infonce_xp.info_nce_value_and_grad(
        *backend.asarrays(*arrays), T, "mean", positives=positives, **on(backend, options)
    )
    expected = recipe_loss(*arrays, temperature=T, positives=positives, **options)
    backend.assert_close(loss, expected, **F64)
    if positives != "supcon":
        backend.assert_close(loss, np.asarray(0.0), atol=1e-15)
    for g in grads[:2]:
        assert np.all(np.isfinite(backend.to_numpy(g)))


@pytest.mark.parametrize("positives", ["supcon", "pairs"])
def test_supervised_without_any_positive_is_zero(backend, positives):
    x = backend.asarray(np.random.default_rng(8).normal(size=(6, D)))
    lonely = backend.asarray(np.arange(6))
    for reduction in ("mean", "sum", "none"):
        got = infonce_xp.supervised_info_nce(x, lonely, reduction=reduction, positives=positives)
        backend.assert_close(got, np.zeros(6) if reduction == "none" else np.asarray(0.0))


# Supervised against references --------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("positives", ["supcon", "pairs"])
def test_supervised_references_match_reference(backend, positives, reduction, chunk_size):
    """``references``: every row against every reference, the references of its class its
    positives (pytorch-metric-learning's ``ref_emb``), a class only among the references and
    a row without a positive included."""
    rng = np.random.default_rng(8)
    x, refs = rng.normal(size=(7, D)), rng.normal(size=(9, D))
    y, ref_y = np.array([0, 1, 0, 2, 1, 3, 0]), np.array([0, 4, 1, 1, 0, 2, 4, 2, 0])
    got = infonce_xp.supervised_info_nce(
        *backend.asarrays(x, y),
        T,
        reduction,
        positives=positives,
        references=backend.asarray(refs),
        reference_labels=backend.asarray(ref_y),
        chunk_size=chunk_size,
    )
    want = supervised_loss(x, y, T, positives, reduction, references=refs, reference_labels=ref_y)
    backend.assert_close(got, want, **F64)


def test_supervised_references_bad_input():
    x, refs = np.random.default_rng(9).normal(size=(2, 5, D))
    y = np.arange(5)
    with pytest.raises(ValueError, match="references and reference_labels go together"):
        infonce_xp.supervised_info_nce(x, y, references=refs)
    with pytest.raises(ValueError, match="references must have shape"):
        infonce_xp.supervised_info_nce(x, y, references=refs[:, :2], reference_labels=y)
    with pytest.raises(ValueError, match="reference_labels must have shape"):
        infonce_xp.supervised_info_nce(x, y, references=refs, reference_labels=y[:3])
