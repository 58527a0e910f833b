"""The sigmoid loss's API on every backend: float32 at extreme logits, inputs never modified,
the class against the function, a one-worker gather, bad input named, and ``jax.jit``,
``jax.vmap`` and ``jax.grad``. Values and gradients: ``test_sigmoid.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest

import infonce_xp
from reference_sigmoid import siglip_reference
from test_sigmoid import (
    F64,
    FD,
    LABELS,
    NAMES,
    REDUCTIONS,
    TILED,
    N,
    data,
    on,
    reference_gradients,
    scalar,
    weights,
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


class OneWorkerRing:
    """A ring of one worker, with no ``scatter``: the ring sends gradients home itself."""

    def __call__(self, x):
        raise AssertionError("exchange='ring' must not gather")

    def rank(self):
        return 0

    def size(self):
        return 1

    def shift(self, x):
        raise AssertionError("a ring of one worker has nothing to shift")


@pytest.mark.parametrize(
    ("gather", "exchange", "chunk_size"),
    [(OneWorker, "gather", None), (OneWorkerRing, "ring", None), (OneWorkerRing, "ring", 3)],
)
def test_a_one_worker_gather_is_no_gather(backend, gather, exchange, chunk_size):
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
    got_loss, got = infonce_xp.sigmoid_loss_value_and_grad(
        *inputs, gather=gather(), exchange=exchange, chunk_size=chunk_size, **common
    )
    backend.assert_close(got_loss, loss, **TILED)
    for name, a, b in zip(NAMES, got, grads):
        backend.assert_close(a, b, **TILED, err_msg=name)


def test_the_ring_needs_a_shift(backend):
    q, k = backend.asarrays(*data())
    with pytest.raises(TypeError, match=r"exchange=\"ring\".*gather.*shift"):
        infonce_xp.sigmoid_loss(q, k, gather=OneWorker(), exchange="ring")


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
