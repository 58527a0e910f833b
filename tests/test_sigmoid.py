"""The sigmoid loss (SigLIP) on every backend: ``sigmoid_loss``, ``sigmoid_loss_value_and_grad``
and ``SigmoidLoss`` against the float64 reference of ``reference_sigmoid.py`` and open_clip
3.3.0's ``SigLipLoss``, finite differences, the tiled execution, float32 at extreme logits,
bad input; and under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

The torch module, ``torch.compile``, ``torch.func`` and autocast: ``test_sigmoid_torch.py``.
"""

from __future__ import annotations

import math

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


# Stability ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("bias", [-50.0, 50.0])
def test_float32_is_finite_at_extreme_logits(backend, bias, chunk_size):
    """t = 0.01 and bias +-50 in float32: logits up to +-150, where a plain exp overflows; the
    loss and gradients are finite and the loss is float64's (to float32 round-off of the
    cosines, times 1/t)."""
    q, k = data()
    t = 0.01
    loss, grads = infonce_xp.sigmoid_loss_value_and_grad(
        *backend.asarrays(q, k, dtype="float32"),
        scalar(backend, t, "float32"),
        scalar(backend, bias, "float32"),
        "none",
        labels=on(backend, LABELS["collide"]),
        chunk_size=chunk_size,
        grad_output=backend.asarray(np.ones(N), "float32"),
    )
    rows = backend.to_numpy(loss)
    assert np.all(np.isfinite(rows)), rows
    for name, g in zip(NAMES, grads):
        assert np.all(np.isfinite(backend.to_numpy(g))), name
    want = siglip_reference(q, k, t, bias, LABELS["collide"], True, "none")
    backend.assert_close(loss, want, rtol=1e-4, atol=1e-3, dtype="float32")
    # the float64 gradients, to the same precision
    _, exact = infonce_xp.sigmoid_loss_value_and_grad(
        *backend.asarrays(q, k),
        scalar(backend, t),
        scalar(backend, bias),
        "none",
        labels=on(backend, LABELS["collide"]),
        grad_output=backend.asarray(np.ones(N)),
    )
    for name, g, e in zip(NAMES, grads, exact):
        scale = float(np.abs(backend.to_numpy(e)).max())
        np.testing.assert_allclose(
            backend.to_numpy(g), backend.to_numpy(e), rtol=1e-3, atol=1e-4 * scale, err_msg=name
        )


# Inputs and the class -------------------------------------------------------------------


def test_inputs_are_never_modified(backend):
    q, k = data()
    labels = LABELS["collide"]
    for a in (q, k, labels):
        a.flags.writeable = backend.name != "numpy"  # read-only NumPy arrays must work
    try:
        for chunk_size, normalize in ((None, True), (3, False)):
            given = [
                *backend.asarrays(q, k),
                scalar(backend, 0.3),
                scalar(backend, -2.0),
                backend.asarray(labels),
            ]
            before = [backend.to_numpy(a).copy() for a in given]
            *arrays, g_labels = given
            options = {"labels": g_labels, "normalize": normalize, "chunk_size": chunk_size}
            for reduction in REDUCTIONS:
                infonce_xp.sigmoid_loss_value_and_grad(*arrays, reduction, **options)
            infonce_xp.sigmoid_loss(*arrays, **options)
            for name, a, was in zip(("query", "key", "t", "b", "labels"), given, before):
                np.testing.assert_array_equal(backend.to_numpy(a), was, err_msg=name)
    finally:
        for a in (q, k, labels):
            a.flags.writeable = True


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_class_matches_function(backend, chunk_size):
    q, k = data()
    inputs = backend.asarrays(q, k)
    labels = backend.asarray(LABELS["collide"])
    options = {"normalize": False, "chunk_size": chunk_size}
    t, b = scalar(backend, 1.5), scalar(backend, 0.5)
    loss_fn = infonce_xp.SigmoidLoss(t, b, "none", **options)
    want = infonce_xp.sigmoid_loss(*inputs, t, b, "none", labels=labels, **options)
    backend.assert_close(loss_fn(*inputs, labels=labels), want, rtol=1e-15)
    backend.assert_close(
        want, siglip_reference(q, k, 1.5, 0.5, LABELS["collide"], False, "none"), **F64
    )
    # positional order of the constructor: temperature, bias, reduction
    loss_fn = infonce_xp.SigmoidLoss(0.3, -2.0, "sum")
    want = siglip_reference(q, k, 0.3, -2.0, None, True, "sum")
    backend.assert_close(loss_fn(*inputs), want, **F64)


class OneWorker:
    """A one-worker gather (with ``scatter``, for libraries without autograd)."""

    def __call__(self, x):
        return x

    def rank(self):
        return 0

    def scatter(self, grad):
        return grad


def test_a_one_worker_gather_is_no_gather(backend):
    q, k = data()
    inputs = backend.asarrays(q, k)
    common = {
        "temperature": scalar(backend, 0.3),
        "bias": scalar(backend, -2.0),
        "reduction": "none",
        "labels": backend.asarray(LABELS["collide"]),
        "grad_output": backend.asarray(weights("none")),
    }
    loss, grads = infonce_xp.sigmoid_loss_value_and_grad(*inputs, **common)
    got_loss, got = infonce_xp.sigmoid_loss_value_and_grad(*inputs, gather=OneWorker(), **common)
    backend.assert_close(got_loss, loss, **TILED)
    for name, a, b in zip(NAMES, got, grads):
        backend.assert_close(a, b, **TILED, err_msg=name)


# Bad input ------------------------------------------------------------------------------


def other_library_scalar(backend):
    """A 0-D float64 array of a library other than ``backend``'s (NumPy's is a number to
    every library, so it is torch's, or JAX's for torch)."""
    if backend.name.startswith("torch"):
        jnp = pytest.importorskip("jax.numpy")
        return jnp.asarray(-10.0)
    torch = pytest.importorskip("torch")
    return torch.tensor(-10.0, dtype=torch.float64)


BAD = {
    # name: (keywords of the call, error, words of its message)
    "bias nan": ({"bias": float("nan")}, ValueError, ["bias", "nan"]),
    "bias inf": ({"bias": float("inf")}, ValueError, ["bias", "inf"]),
    "bias -inf": ({"bias": -math.inf}, ValueError, ["bias", "inf"]),
    "bias str": ({"bias": "-10"}, TypeError, ["bias"]),
    "bias ndim 1": ({"bias": "ndim 1"}, ValueError, ["bias", "(1,)"]),
    "bias of another library": ({"bias": "other"}, TypeError, ["bias"]),
    "temperature 0": ({"temperature": 0.0}, ValueError, ["temperature", "0.0"]),
    "temperature < 0": ({"temperature": -0.1}, ValueError, ["temperature", "-0.1"]),
    "temperature nan": ({"temperature": float("nan")}, ValueError, ["temperature", "nan"]),
    "key rows": ({"key": "rows"}, ValueError, ["key", str(N), str(N + 1)]),
    "labels length": ({"labels": "length"}, ValueError, ["labels", f"({N + 1},)"]),
    "labels 2-D": ({"labels": "2-D"}, ValueError, ["labels", f"({N}, 1)"]),
    "exchange": ({"exchange": "allgather"}, ValueError, ["exchange", "'allgather'", "gather"]),
    "reduction": ({"reduction": "avg"}, ValueError, ["reduction", "'avg'"]),
}


# the cases whose bad value is an option of SigmoidLoss (not a call's array)
AT_CONSTRUCTION = [
    c for c in BAD if c.split()[0] in ("bias", "temperature", "exchange", "reduction")
]
AT_CONSTRUCTION.remove("bias of another library")  # the class cannot know the call's library


def bad_call(backend, kwargs):
    """The call's arguments with the named bad value made of ``backend``'s arrays."""
    q, k = data()
    call = {"query": backend.asarray(q), "key": backend.asarray(k), **kwargs}
    if kwargs.get("bias") == "ndim 1":
        call["bias"] = backend.asarray(np.array([-10.0]))
    elif kwargs.get("bias") == "other":
        call["bias"] = other_library_scalar(backend)
    if kwargs.get("key") == "rows":
        call["key"] = backend.asarray(data(N + 1)[1])
    if kwargs.get("labels") == "length":
        call["labels"] = backend.asarray(np.arange(N + 1))
    elif kwargs.get("labels") == "2-D":
        call["labels"] = backend.asarray(np.arange(N)[:, None])
    return call


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_named(backend, case):
    kwargs, error, words = BAD[case]
    call = bad_call(backend, kwargs)
    query, key = call.pop("query"), call.pop("key")
    for function in (infonce_xp.sigmoid_loss, infonce_xp.sigmoid_loss_value_and_grad):
        with pytest.raises(error) as info:
            function(query, key, **call)
        for word in words:
            assert word in str(info.value), (case, word, str(info.value))
    labels = call.pop("labels", None)
    with pytest.raises(error) as info:  # at construction or at the call
        infonce_xp.SigmoidLoss(**call)(query, key, labels=labels)
    for word in words:
        assert word in str(info.value), (case, word, str(info.value))


@pytest.mark.parametrize("case", AT_CONSTRUCTION)
def test_class_checks_its_options_at_construction(backend, case):
    """As ``InfoNCE`` does for its temperature: a bad option fails where it is written."""
    kwargs, error, words = BAD[case]
    call = bad_call(backend, kwargs)
    del call["query"], call["key"]
    with pytest.raises(error) as info:
        infonce_xp.SigmoidLoss(**call)
    for word in words:
        assert word in str(info.value), (case, word, str(info.value))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_array_bias_is_range_checked_where_readable(backend, bad):
    q, k = backend.asarrays(*data())
    b = scalar(backend, bad)
    if not backend.host_readable:
        pytest.skip("a call does not synchronise to read a device array's value")
    with pytest.raises(ValueError, match="bias"):
        infonce_xp.sigmoid_loss(q, k, bias=b)


# JAX ------------------------------------------------------------------------------------


@pytest.mark.backends("jax")
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_jax_jit(chunk_size):
    import jax

    jax.config.update("jax_enable_x64", True)
    q, k = data()
    labels = LABELS["collide"]

    @jax.jit
    def loss(q, k, t, b, labels):
        return infonce_xp.sigmoid_loss(q, k, t, b, "none", labels=labels, chunk_size=chunk_size)

    jnp = jax.numpy
    got = loss(jnp.asarray(q), jnp.asarray(k), jnp.asarray(0.3), jnp.asarray(-2.0),
               jnp.asarray(labels))  # fmt: skip
    want = siglip_reference(q, k, 0.3, -2.0, labels, True, "none")
    np.testing.assert_allclose(np.asarray(got), want, **F64)


@pytest.mark.backends("jax")
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_jax_grad_of_temperature_and_bias(chunk_size):
    """jax.grad (jitted) of every input, temperature and bias included, against finite
    differences of the reference."""
    import jax

    jax.config.update("jax_enable_x64", True)
    q, k = data()
    labels = LABELS["collide"]
    jnp = jax.numpy

    def f(q, k, t, b):
        return infonce_xp.sigmoid_loss(
            q, k, t, b, labels=jnp.asarray(labels), chunk_size=chunk_size
        )

    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(0.3), jnp.asarray(-2.0)
    )
    wanted = reference_gradients(q, k, 0.3, -2.0, labels, True, "mean", 1.0)
    for name, got, fd in zip(NAMES, grads, wanted):
        np.testing.assert_allclose(np.asarray(got), fd, **FD, err_msg=name)


@pytest.mark.backends("jax")
def test_jax_vmap():
    """vmap over a leading batch of problems equals a loop; vmap of grad too."""
    import jax

    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    problems = [data(seed=s) for s in range(3)]
    qs = jnp.asarray(np.stack([p[0] for p in problems]))
    ks = jnp.asarray(np.stack([p[1] for p in problems]))
    ts = jnp.asarray([0.1, 0.3, 1.0])
    bs = jnp.asarray([-10.0, -2.0, 0.5])
    got = jax.vmap(lambda q, k, t, b: infonce_xp.sigmoid_loss(q, k, t, b, "none"))(qs, ks, ts, bs)
    want = np.stack(
        [siglip_reference(q, k, t, b, None, True, "none")
         for (q, k), t, b in zip(problems, [0.1, 0.3, 1.0], [-10.0, -2.0, 0.5])]
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), want, **F64)
    per_problem = jax.vmap(
        jax.grad(lambda q, k, t, b: infonce_xp.sigmoid_loss(q, k, t, b), argnums=(2, 3))
    )(qs, ks, ts, bs)
    for i, (q, k) in enumerate(problems):
        wanted = reference_gradients(q, k, float(ts[i]), float(bs[i]), None, True, "mean", 1.0)
        np.testing.assert_allclose(np.asarray(per_problem[0][i]), wanted[2], **FD)
        np.testing.assert_allclose(np.asarray(per_problem[1][i]), wanted[3], **FD)
