"""The sigmoid loss (SigLIP) on every backend: ``sigmoid_loss``, ``sigmoid_loss_value_and_grad``
and ``SigmoidLoss`` against the float64 reference of ``reference_sigmoid.py`` and open_clip
3.3.0's ``SigLipLoss``, finite differences, the tiled execution, float32 at extreme logits,
bad input; and under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

The torch module, ``torch.compile``, ``torch.func`` and autocast: ``test_sigmoid_torch.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import infonce_xp
from reference import finite_difference
from reference_sigmoid import open_clip_siglip, require_open_clip, siglip_reference

N, D = 7, 5
F64 = {"rtol": 1e-10, "atol": 1e-10}
F32 = {"rtol": 1e-5, "atol": 1e-5}
TILED = {"rtol": 1e-12, "atol": 1e-12}
FD = {"rtol": 1e-6, "atol": 1e-8}
REDUCTIONS = ("none", "mean", "sum")
LABELS = {
    None: None,
    "collide": np.array([0, 1, 0, 2, 1, 0, 3]),  # duplicates, and class 3 alone
    "distinct": np.arange(N),
    "one-class": np.zeros(N, dtype=np.int64),
}
# (temperature, bias): SigLIP's init, a milder one, and a positive bias
SCALES = [(0.1, -10.0), (0.3, -2.0), (1.0, 0.5)]
NAMES = ("query", "key", "temperature", "bias")


def data(n=N, d=D, seed=0):
    """NumPy (query, key), each key near its query."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, d))
    return q, q + rng.normal(size=(n, d))


def scalar(backend, x, dtype="float64"):
    """``x`` as a 0-D array of ``backend``."""
    return backend.asarray(np.asarray(x), dtype)


def on(backend, labels):
    return None if labels is None else backend.asarray(labels)


def weights(reduction, n=N, seed=3):
    """A grad_output: random row weights for "none", a number for the others."""
    if reduction == "none":
        return np.random.default_rng(seed).normal(size=n)
    return np.asarray(1.3)


# Values ---------------------------------------------------------------------------------


# (labels, normalize, (t, b), scalars as 0-D arrays): every labelling with and without
# normalisation, and every scale as numbers and as arrays
VALUE_CASES = [
    *((labels, normalize, *SCALES[1], False) for labels in LABELS for normalize in (True, False)),
    *(("collide", True, *scale, arrays) for scale in SCALES for arrays in (False, True)),
]


@pytest.mark.parametrize(("labels", "normalize", "t", "b", "arrays"), VALUE_CASES)
def test_values_match_reference(backend, labels, normalize, t, b, arrays):
    q, k = data()
    inputs = backend.asarrays(q, k)
    temperature, bias = (scalar(backend, t), scalar(backend, b)) if arrays else (t, b)
    for reduction in REDUCTIONS:
        got = infonce_xp.sigmoid_loss(
            *inputs,
            temperature,
            bias,
            reduction,
            labels=on(backend, LABELS[labels]),
            normalize=normalize,
        )
        want = siglip_reference(q, k, t, b, LABELS[labels], normalize, reduction)
        backend.assert_close(got, want, **F64, err_msg=f"{labels}, {normalize}, {reduction}")


@pytest.mark.parametrize(("t", "b"), SCALES)
@pytest.mark.parametrize("labels", [None, "collide"])
def test_float32_values_match_reference(backend, labels, t, b):
    """Untiled; the tiled float32 path: test_float32_is_finite_at_extreme_logits."""
    q, k = data()
    for reduction in REDUCTIONS:
        got = infonce_xp.sigmoid_loss(
            *backend.asarrays(q, k, dtype="float32"),
            scalar(backend, t, "float32"),
            scalar(backend, b, "float32"),
            reduction,
            labels=on(backend, LABELS[labels]),
        )
        want = siglip_reference(q, k, t, b, LABELS[labels], True, reduction)
        backend.assert_close(got, want, **F32, dtype="float32", err_msg=reduction)
        # a float32 problem with Python-number scalars stays float32
        got = infonce_xp.sigmoid_loss(*backend.asarrays(q, k, dtype="float32"), t, b, reduction)
        want = siglip_reference(q, k, t, b, None, True, reduction)
        backend.assert_close(got, want, **F32, dtype="float32", err_msg=reduction)


def test_defaults_are_siglips(backend):
    """temperature 0.1, bias -10, "mean", normalised: SigLIP's init and its loss."""
    q, k = data()
    got = infonce_xp.sigmoid_loss(*backend.asarrays(q, k))
    backend.assert_close(got, siglip_reference(q, k, 0.1, -10.0), **F64)
    backend.assert_close(infonce_xp.SigmoidLoss()(*backend.asarrays(q, k)), got, rtol=1e-15)


def test_the_reductions(backend):
    """The rows ("none"), their sum, and "mean" = the sum over the batch size N (as SigLIP
    divides), not over the N^2 pairs."""
    q, k = data()
    inputs = backend.asarrays(q, k)
    labels = backend.asarray(LABELS["collide"])
    rows, total, mean = (
        backend.to_numpy(infonce_xp.sigmoid_loss(*inputs, 0.3, -2.0, r, labels=labels))
        for r in ("none", "sum", "mean")
    )
    assert rows.shape == (N,) and total.shape == () and mean.shape == ()
    np.testing.assert_allclose(rows.sum(), total, rtol=1e-13)
    np.testing.assert_allclose(rows.sum() / N, mean, rtol=1e-13)
    assert not np.isclose(rows.sum() / N**2, mean)


def test_the_options_change_the_loss():
    """The checks above could not tell labels, normalize, temperature and bias apart if they
    agreed: they do not (and distinct labels are no labels)."""
    q, k = data()
    values = {
        "plain": siglip_reference(q, k, 0.3, -2.0),
        "labels": siglip_reference(q, k, 0.3, -2.0, LABELS["collide"]),
        "one-class": siglip_reference(q, k, 0.3, -2.0, LABELS["one-class"]),
        "dot": siglip_reference(q, k, 0.3, -2.0, normalize=False),
        "t": siglip_reference(q, k, 0.2, -2.0),
        "b": siglip_reference(q, k, 0.3, -1.0),
    }
    assert len({round(float(v), 9) for v in values.values()}) == len(values), values
    distinct = siglip_reference(q, k, 0.3, -2.0, LABELS["distinct"])
    np.testing.assert_allclose(distinct, values["plain"], rtol=1e-15)


def test_labels_are_the_positive_pairs(backend):
    """A brute-force check of what labels mean: the loss with labels equals the plain loss
    with every same-class pair's term flipped from softplus(x) to softplus(-x)."""
    q, k = data()
    labels = LABELS["collide"]
    t, b = 0.3, -2.0
    x = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        k / np.linalg.norm(k, axis=1, keepdims=True)
    ).T / t + b
    same = (labels[:, None] == labels[None, :]) & ~np.eye(N, dtype=bool)
    flipped = np.where(same, np.logaddexp(0, -x) - np.logaddexp(0, x), 0.0).sum(axis=1)
    plain = siglip_reference(q, k, t, b, reduction="none")
    got = infonce_xp.sigmoid_loss(
        *backend.asarrays(q, k), t, b, "none", labels=backend.asarray(labels)
    )
    backend.assert_close(got, plain + flipped, **F64)


# open_clip ------------------------------------------------------------------------------


@pytest.mark.parametrize(("t", "b"), SCALES)
def test_reference_matches_open_clip(t, b):
    """The reference is open_clip's SigLipLoss with logit_scale = 1/t, logit_bias = b."""
    torch = pytest.importorskip("torch")
    require_open_clip()
    for seed in range(3):
        q, k = data(seed=seed)
        got = open_clip_siglip(
            torch.asarray(q),
            torch.asarray(k),
            torch.tensor(1 / t, dtype=torch.float64),
            torch.tensor(b, dtype=torch.float64),
        )
        np.testing.assert_allclose(got.item(), siglip_reference(q, k, t, b), rtol=1e-13)


def open_clip_values_and_grads(q, k, t, b, dtype):
    """open_clip's loss in ``dtype`` (torch autograd) with logit_scale = 1/t from a leaf t:
    the loss and its gradients of the features, t and b, as float64 NumPy."""
    import torch

    leaves = [torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True) for a in (q, k, t, b)]
    qt, kt, tt, bt = leaves
    loss = open_clip_siglip(qt, kt, 1 / tt, bt)
    loss.backward()
    return loss.item(), [x.grad.double().numpy() for x in leaves]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("t", "b"), SCALES)
def test_values_and_gradients_match_open_clip(backend, t, b, dtype):
    """``sigmoid_loss_value_and_grad`` with 0-D temperature and bias, on every backend, against
    open_clip's SigLipLoss under torch autograd in the same dtype."""
    torch = pytest.importorskip("torch")
    require_open_clip()
    q, k = data()
    want, want_grads = open_clip_values_and_grads(q, k, t, b, getattr(torch, dtype))
    loss, grads = infonce_xp.sigmoid_loss_value_and_grad(
        *backend.asarrays(q, k, dtype=dtype), scalar(backend, t, dtype), scalar(backend, b, dtype)
    )
    tolerance = F64 if dtype == "float64" else F32
    backend.assert_close(loss, np.asarray(want), **tolerance, dtype=dtype)
    for name, got, wanted in zip(NAMES, grads, want_grads):
        backend.assert_close(got, wanted, **tolerance, dtype=dtype, err_msg=name)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_autograd_matches_open_clip_of_logit_scale(dtype, chunk_size):
    """Through torch autograd with open_clip's own parameters: leaves logit_scale and
    logit_bias, ``temperature = 1 / logit_scale``; the gradients of the features, the scale
    and the bias are open_clip's."""
    import torch

    require_open_clip()
    q, k = data()
    dtype = getattr(torch, dtype)
    results = []
    for ours in (True, False):
        leaves = [
            torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True)
            for a in (q, k, 10.0, -10.0)
        ]
        qt, kt, scale, bias = leaves
        if ours:
            loss = infonce_xp.sigmoid_loss(qt, kt, 1 / scale, bias, chunk_size=chunk_size)
        else:
            loss = open_clip_siglip(qt, kt, scale, bias)
        loss.backward()
        results.append([loss.detach(), *(x.grad for x in leaves)])
    tolerance = F64 if dtype == torch.float64 else F32
    for name, a, b in zip(("loss", "query", "key", "logit_scale", "logit_bias"), *results):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a, b, **tolerance, msg=name)


# Gradients ------------------------------------------------------------------------------


def reference_gradients(q, k, t, b, labels, normalize, reduction, grad_output):
    """Finite differences of the reference weighted by ``grad_output``: d/dq, d/dk, d/dt,
    d/db."""

    def value(q, k, t, b):
        out = siglip_reference(q, k, float(t), float(b), labels, normalize, reduction)
        return float(np.sum(out * grad_output))

    return [
        finite_difference(lambda x: value(x, k, t, b), q),
        finite_difference(lambda x: value(q, x, t, b), k),
        finite_difference(lambda x: value(q, k, x, b), np.asarray(t)),
        finite_difference(lambda x: value(q, k, t, x), np.asarray(b)),
    ]


# (labels, normalize, reduction, chunk_size): every untiled one, two tiled (tiled = untiled
# is test_tiled_equals_untiled's)
GRAD_CASES = [
    *(
        (labels, normalize, reduction, None)
        for labels in (None, "collide")
        for normalize in (True, False)
        for reduction in REDUCTIONS
    ),
    ("collide", True, "none", 3),
    (None, False, "mean", 3),
]


@pytest.mark.parametrize(("labels", "normalize", "reduction", "chunk_size"), GRAD_CASES)
def test_gradients_match_finite_differences(backend, labels, normalize, reduction, chunk_size):
    """The analytic backward of every input, temperature and bias as 0-D arrays."""
    q, k = data()
    t, b = (0.3, -2.0) if normalize else (1.5, 0.5)  # moderate logits for raw dot products
    grad_output = weights(reduction)
    loss, grads = infonce_xp.sigmoid_loss_value_and_grad(
        *backend.asarrays(q, k),
        scalar(backend, t),
        scalar(backend, b),
        reduction,
        labels=on(backend, LABELS[labels]),
        normalize=normalize,
        chunk_size=chunk_size,
        grad_output=backend.asarray(grad_output),
    )
    backend.assert_close(
        loss, siglip_reference(q, k, t, b, LABELS[labels], normalize, reduction), **F64
    )
    assert tuple(grads._fields) == NAMES
    wanted = reference_gradients(q, k, t, b, LABELS[labels], normalize, reduction, grad_output)
    for name, got, fd in zip(NAMES, grads, wanted):
        backend.assert_close(got, np.asarray(fd), **FD, err_msg=name)


def test_gradients_at_siglips_init(backend):
    q, k = data()
    _, grads = infonce_xp.sigmoid_loss_value_and_grad(
        *backend.asarrays(q, k), scalar(backend, 0.1), scalar(backend, -10.0)
    )
    wanted = reference_gradients(q, k, 0.1, -10.0, None, True, "mean", 1.0)
    for name, got, fd in zip(NAMES, grads, wanted):
        backend.assert_close(got, np.asarray(fd), **FD, err_msg=name)


def test_number_scalars_get_no_gradient(backend):
    """Python-number temperature and bias: their gradients are None, the others as with
    arrays; the default grad_output is 1."""
    q, k = data()
    inputs = backend.asarrays(q, k)
    loss, grads = infonce_xp.sigmoid_loss_value_and_grad(*inputs, 0.3, -2.0)
    assert grads.temperature is None and grads.bias is None
    loss_a, grads_a = infonce_xp.sigmoid_loss_value_and_grad(
        *inputs, scalar(backend, 0.3), scalar(backend, -2.0), grad_output=scalar(backend, 1.0)
    )
    backend.assert_close(loss, loss_a, **TILED)
    backend.assert_close(grads.query, grads_a.query, **TILED)
    backend.assert_close(grads.key, grads_a.key, **TILED)
    # one of them an array
    _, mixed = infonce_xp.sigmoid_loss_value_and_grad(*inputs, 0.3, scalar(backend, -2.0))
    assert mixed.temperature is None
    backend.assert_close(mixed.bias, grads_a.bias, **TILED)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("labels", [None, "collide"])
def test_torch_autograd_matches_finite_differences(labels, chunk_size):
    import torch

    q, k = data()
    t, b = 0.3, -2.0
    leaves = [torch.tensor(np.asarray(a), requires_grad=True) for a in (q, k, t, b)]
    grad_output = weights("none")
    rows = infonce_xp.sigmoid_loss(
        *leaves,
        "none",
        labels=None if labels is None else torch.asarray(LABELS[labels]),
        chunk_size=chunk_size,
    )
    rows.backward(torch.asarray(grad_output))
    wanted = reference_gradients(q, k, t, b, LABELS[labels], True, "none", grad_output)
    for name, leaf, fd in zip(NAMES, leaves, wanted):
        np.testing.assert_allclose(leaf.grad.numpy(), fd, **FD, err_msg=name)


# Tiles ----------------------------------------------------------------------------------


# (labels, normalize, chunk_size): every chunk size (1, one that does not divide N, N, more
# than N) with labels, and the others without
TILED_CASES = [
    *(("collide", True, c) for c in (1, 3, 7, 50)),
    (None, False, 3),
    ("collide", False, 7),
    (None, True, 4),
]


@pytest.mark.parametrize(("labels", "normalize", "chunk_size"), TILED_CASES)
def test_tiled_equals_untiled(backend, labels, normalize, chunk_size):
    q, k = data()
    common = {
        "temperature": scalar(backend, 0.3),
        "bias": scalar(backend, -2.0),
        "reduction": "none",
        "labels": on(backend, LABELS[labels]),
        "normalize": normalize,
        "grad_output": backend.asarray(weights("none")),
    }
    inputs = backend.asarrays(q, k)
    loss, grads = infonce_xp.sigmoid_loss_value_and_grad(*inputs, **common)
    tiled_loss, tiled = infonce_xp.sigmoid_loss_value_and_grad(
        *inputs, chunk_size=chunk_size, **common
    )
    backend.assert_close(tiled_loss, loss, **TILED)
    for name, a, b in zip(NAMES, tiled, grads):
        backend.assert_close(a, b, **TILED, err_msg=name)
    for reduction in ("mean", "sum") if chunk_size == 3 else ():
        plain = {**common, "reduction": reduction}
        del plain["grad_output"]
        backend.assert_close(
            infonce_xp.sigmoid_loss(*inputs, chunk_size=chunk_size, **plain),
            infonce_xp.sigmoid_loss(*inputs, **plain),
            **TILED,
            err_msg=reduction,
        )
