"""Values of info_nce on every backend against the seed and a float64 NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import infonce_xp
from infonce_xp import InfoNCE, info_nce
from reference import reduce, reference_rows, seed

MODES = ("in-batch", "unpaired", "paired")


@st.composite
def problems(draw, max_n=64, max_d=64):
    """A random problem: shapes, mode, temperature and data drawn once (as NumPy arrays)."""
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    m = draw(st.integers(1, max_n))
    mode = draw(st.sampled_from(MODES))
    temperature = draw(st.sampled_from([0.01, 0.05, 0.1, 0.5, 1.0, 10.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q, k = rng.normal(size=(2, n, d))
    k = q + draw(st.sampled_from([0.1, 1.0, 3.0])) * k  # positives related to their queries
    neg = {
        "in-batch": None,
        "unpaired": rng.normal(size=(m, d)),
        "paired": rng.normal(size=(n, m, d)),
    }[mode]
    return q, k, neg, temperature, "paired" if mode == "paired" else "unpaired"


def tolerance(dtype: str, temperature: float) -> dict:
    # Rounding of logits of size up to 1/t is what limits the absolute error.
    if dtype == "float32":
        return {"rtol": 1e-5, "atol": 2e-6 / temperature}
    return {"rtol": 1e-12, "atol": 1e-13 / temperature}


@given(
    problem=problems(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_matches_reference_and_seed(backend, problem, reduction, dtype):
    q, k, neg, t, mode = problem
    q, k = q.astype(dtype), k.astype(dtype)
    neg = None if neg is None else neg.astype(dtype)
    out = info_nce(
        *backend.asarrays(q, k, neg), temperature=t, reduction=reduction, negative_mode=mode
    )
    expected = reduce(reference_rows(q, k, neg, t, mode), reduction)
    assert expected.shape == ((len(q),) if reduction == "none" else ())
    scale = len(q) if reduction == "sum" else 1
    tol = {"rtol": tolerance(dtype, t)["rtol"], "atol": tolerance(dtype, t)["atol"] * scale}
    # the result: of the inputs' namespace, device and dtype, the reference's shape and values
    backend.assert_close(out, expected, **tol, dtype=dtype)
    backend.assert_close(out, seed(q, k, neg, t, reduction, mode, dtype), **tol)


@pytest.mark.parametrize("n, d", [(1, 1), (512, 512), (300, 7)])
def test_extreme_shapes_match_seed(backend, n, d):
    rng = np.random.default_rng(n + d)
    q, k, neg = rng.normal(size=(3, n, d)).astype(np.float32)
    for negatives, mode in ((None, "unpaired"), (neg, "unpaired"), (neg[:, None, :], "paired")):
        got = info_nce(*backend.asarrays(q, k, negatives), negative_mode=mode, reduction="none")
        backend.assert_close(
            got, seed(q, k, negatives, 0.1, "none", mode, "float32"), rtol=1e-5, atol=2e-5
        )


def test_result_is_an_array_of_the_input_namespace(backend):
    rng = np.random.default_rng(0)
    q, k = backend.asarrays(*rng.normal(size=(2, 8, 4)))
    for reduction, shape in (("mean", ()), ("sum", ()), ("none", (8,))):
        out = info_nce(q, k, reduction=reduction)
        assert type(out) is type(q)
        assert tuple(out.shape) == shape
    from array_api_compat import device

    assert device(info_nce(q, k)) == device(q)


def test_mixed_precision_promotes(backend):
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(2, 6, 3))
    out = info_nce(*backend.asarrays(q.astype(np.float32), k))
    # a float64 result, of the float64 reference's value
    backend.assert_close(out, reference_rows(q.astype(np.float32), k).mean(), rtol=1e-12)


# Properties -----------------------------------------------------------------------------


@given(problem=problems(max_n=16, max_d=16), data=st.data())
def test_scale_invariance_of_each_row(backend, problem, data):
    q, k, neg, t, mode = problem
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    scaled = [
        None if a is None else a * rng.uniform(0.1, 10.0, size=(*a.shape[:-1], 1))
        for a in (q, k, neg)
    ]
    base = info_nce(*backend.asarrays(q, k, neg), t, "none", mode)
    other = info_nce(*backend.asarrays(*scaled), t, "none", mode)
    backend.assert_close(base, other, rtol=1e-9, atol=1e-9)


@given(problem=problems(max_n=16, max_d=8), data=st.data())
def test_permutation_equivariance(backend, problem, data):
    q, k, neg, t, mode = problem
    perm = np.asarray(data.draw(st.permutations(range(len(q)))))
    permuted_neg = neg[perm] if mode == "paired" else neg
    base = backend.to_numpy(info_nce(*backend.asarrays(q, k, neg), t, "none", mode))
    other = info_nce(*backend.asarrays(q[perm], k[perm], permuted_neg), t, "none", mode)
    backend.assert_close(other, base[perm], rtol=1e-10, atol=1e-12)


@given(problem=problems(max_n=16, max_d=8))
def test_reductions_and_positivity(backend, problem):
    q, k, neg, t, mode = problem
    args = backend.asarrays(q, k, neg)
    rows = backend.to_numpy(info_nce(*args, t, "none", mode))
    total = info_nce(*args, t, "sum", mode)
    mean = info_nce(*args, t, "mean", mode)
    assert np.all(rows >= 0)
    backend.assert_close(mean, backend.to_numpy(total) / len(q), rtol=1e-12)
    backend.assert_close(total, rows.sum(), rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 17])
def test_identical_embeddings_give_log_n(backend, n):
    x = backend.asarray(np.ones((n, 5)))
    for symmetric in (False, True):
        backend.assert_close(
            info_nce(x, x, symmetric=symmetric), math.log(n), rtol=1e-12, atol=1e-15
        )


# Precision --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_accumulates_in_float32(backend, dtype, temperature, mode):
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=(2, 64, 32))
    neg = {
        "in-batch": None,
        "unpaired": rng.normal(size=(40, 32)),
        "paired": rng.normal(size=(64, 5, 32)),
    }[mode]
    arrays = backend.asarrays(q, k, neg, dtype=dtype)
    rounded = [None if a is None else backend.to_numpy(a).astype(np.float64) for a in arrays]
    out = info_nce(*arrays, temperature, "none", "paired" if mode == "paired" else "unpaired")
    ref = reference_rows(*rounded, temperature, "paired" if mode == "paired" else "unpaired")
    # |got - ref| <= 1e-2 |ref| + 1e-7, in float64, with the result still in `dtype`
    backend.assert_close(out, ref, rtol=1e-2, atol=1e-7, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_near_perfect_batch_keeps_its_tiny_loss(backend, dtype):
    """The seed returns exactly 0.0 here in half precision; the true loss is a few 1e-6."""
    x = np.eye(8, 16)
    arrays = backend.asarrays(x, x, dtype=dtype)
    for chunk_size in (None, 3):
        got = info_nce(*arrays, temperature=0.07, chunk_size=chunk_size)
        ref = reference_rows(x, x, temperature=0.07).mean()
        assert 1e-6 < ref < 1e-5
        backend.assert_close(got, ref, rtol=1e-2, atol=1e-7, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("where", ["query", "positive_key", "negative_keys"])
def test_zero_rows_give_finite_loss_and_gradients(backend, dtype, where):
    rng = np.random.default_rng(5)
    data = dict(zip(("query", "positive_key", "negative_keys"), rng.normal(size=(3, 6, 4))))
    data[where][2] = 0.0
    for negatives in (None, data["negative_keys"]):
        if negatives is None and where == "negative_keys":
            continue
        arrays = backend.asarrays(data["query"], data["positive_key"], negatives, dtype=dtype)
        loss, grads = infonce_xp.info_nce_value_and_grad(*arrays)
        assert np.isfinite(backend.to_numpy(loss))
        for g in grads[:3]:
            if g is not None:
                assert np.all(np.isfinite(backend.to_numpy(g).astype(np.float64)))
        if dtype == "float32":
            expected = seed(data["query"], data["positive_key"], negatives, dtype="float32")
            backend.assert_close(loss, expected, rtol=1e-5)


# The class ---------------------------------------------------------------------------------


def test_class_calls_the_function(backend):
    rng = np.random.default_rng(6)
    q, k = backend.asarrays(*rng.normal(size=(2, 10, 4)))
    neg = backend.asarray(rng.normal(size=(10, 3, 4)))
    loss_fn = InfoNCE(temperature=0.2, reduction="sum", negative_mode="paired")
    backend.assert_close(loss_fn(q, k, neg), info_nce(q, k, neg, 0.2, "sum", "paired"), rtol=1e-14)
    assert repr(loss_fn) == "InfoNCE(temperature=0.2, reduction='sum', negative_mode='paired')"
    assert repr(InfoNCE(symmetric=True, chunk_size=8)) == (
        "InfoNCE(temperature=0.1, reduction='mean', negative_mode='unpaired', symmetric=True, chunk_size=8)"
    )


def test_no_backend_is_imported_at_import_time():
    import subprocess
    import sys

    code = "import sys, infonce_xp; print(sorted(m for m in ('torch', 'jax', 'numpy', 'cupy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
