"""Targets beyond one-hot at the API's edges: the errors (each names its argument), inputs left
untouched, all-zero weights, JAX's transforms, and the tiled call's resident memory with each
option. torch's autograd, compile, ``torch.func`` and autocast: ``test_targets_compile.py``."""

from __future__ import annotations

import os

import numpy as np
import pytest

import infonce_xp

N, M, D, T = 6, 5, 4, 0.3
rng = np.random.default_rng(0)
Q, K = rng.normal(size=(2, N, D))
NEG = rng.normal(size=(M, D))
TQ, TK = rng.normal(size=(2, N, 3))
TN = rng.normal(size=(M, 3))
Y = np.arange(N) % 2
FUNCTIONS = (infonce_xp.info_nce, infonce_xp.info_nce_value_and_grad)
# name: (option, call data); "teacher" / "sample_weight" True stand for the arrays of ``extras``
OPTIONS = {
    "smoothing": {"label_smoothing": 0.2},
    "margin": {"margin": 0.3},
    "teacher": {"teacher": True, "teacher_temperature": 0.5},
    "weights": {"sample_weight": True},
    "debiased+hcl": {"debiased_prior": 0.2, "hardness_beta": 1.5},
    "smoothing+margin+weights": {"label_smoothing": 0.1, "margin": 0.2, "sample_weight": True},
    "teacher+smoothing+margin": {"teacher": True, "label_smoothing": 0.1, "margin": 0.2},
    "debiased+margin+weights": {"debiased_prior": 0.1, "margin": 0.2, "sample_weight": True},
}


def extras(name, n=N, negatives=False, seed=3):
    """The options of ``OPTIONS[name]`` with NumPy teacher arrays (width 3) and weights."""
    out = dict(OPTIONS[name])
    g = np.random.default_rng(seed)
    if out.get("teacher"):
        out["teacher"] = tuple(g.normal(size=(m, 3)) for m in (n, n, M)[: 2 + negatives])
    if out.get("sample_weight"):
        out["sample_weight"] = g.uniform(0.0, 2.0, size=n)
    return out


# Errors -----------------------------------------------------------------------------------

ERRORS = [
    ({"label_smoothing": -0.1}, ValueError, r"label_smoothing must be in \[0, 1\)"),
    ({"label_smoothing": 1.0}, ValueError, r"label_smoothing must be in \[0, 1\)"),
    ({"label_smoothing": float("nan")}, ValueError, r"label_smoothing must be in \[0, 1\)"),
    ({"label_smoothing": "0.1"}, TypeError, "label_smoothing must be a number"),
    ({"teacher_temperature": 0}, ValueError, "teacher_temperature must be .*> 0"),
    ({"teacher_temperature": -1}, ValueError, "teacher_temperature must be .*> 0"),
    ({"teacher": (TQ, TK), "teacher_temperature": 0.0}, ValueError, "teacher_temperature"),
    ({"margin": float("nan")}, ValueError, "margin must be a finite number"),
    ({"margin": float("inf")}, ValueError, "margin must be a finite number"),
    ({"margin": -float("inf")}, ValueError, "margin must be a finite number"),
    ({"margin": "0.2"}, TypeError, "margin must be a number"),
    ({"debiased_prior": 1.0}, ValueError, r"debiased_prior must be in \[0, 1\)"),
    ({"debiased_prior": -0.1}, ValueError, "debiased_prior must be .*>= 0"),
    ({"hardness_beta": -1}, ValueError, "hardness_beta must be .*>= 0"),
    ({"hardness_beta": "1"}, TypeError, "hardness_beta must be a number"),
    *(
        ({o: 0.1, "positives": p, "labels": Y}, ValueError, f"{o}.*positives='own'")
        for o in ("debiased_prior", "hardness_beta")
        for p in ("supcon", "pairs")
    ),
    ({"debiased_prior": 0.1, "label_smoothing": 0.1}, ValueError, "label_smoothing"),
    ({"hardness_beta": 0.5, "label_smoothing": 0.1}, ValueError, "label_smoothing"),
    ({"debiased_prior": 0.1, "teacher": (TQ, TK)}, ValueError, "teacher=.*debiased_prior"),
    ({"hardness_beta": 0.5, "teacher": (TQ, TK)}, ValueError, "teacher=.*hardness_beta"),
    (
        {"label_smoothing": 0.1, "positives": "pairs", "labels": Y},
        ValueError,
        "label_smoothing.*positives='pairs'",
    ),
    ({"teacher": (TQ, TK), "positives": "pairs", "labels": Y}, ValueError, "teacher=.*'pairs'"),
    ({"teacher": (TQ[:5], TK)}, ValueError, r"teacher_query must have the rows of query.*\(5, 3\)"),
    ({"teacher": (TQ, TK[:, None])}, ValueError, "teacher_positive_key must have the rows"),
    ({"teacher": (TQ[None], TK)}, ValueError, "teacher_query must have the rows"),
    ({"teacher": (TQ.astype(np.int64), TK)}, TypeError, "teacher_query must have a real floating"),
    ({"teacher": (TQ, TK > 0)}, TypeError, "teacher_positive_key must have a real floating"),
    ({"teacher": (TQ, TK[:, :2])}, ValueError, r"teacher's arrays must share one width.*\[2, 3\]"),
    ({"teacher": (TQ, TK, TN)}, TypeError, "teacher must be a tuple of 2 arrays"),
    ({"teacher": (TQ,)}, TypeError, "teacher must be a tuple of 2 arrays"),
    ({"teacher": TQ}, TypeError, "teacher must be a tuple of 2 arrays"),
    ({"teacher": (TQ, TK), "guide": (TQ, TK)}, ValueError, "guide=.*teacher="),
    ({"teacher": (TQ, TK), "guide_margin": 0.1}, ValueError, "teacher=.*guide_margin"),
    ({"sample_weight": np.ones(N - 1)}, ValueError, r"sample_weight must have shape \(6,\)"),
    ({"sample_weight": np.ones((N, 1))}, ValueError, r"sample_weight must have shape \(6,\)"),
    ({"sample_weight": np.ones(())}, ValueError, r"sample_weight must have shape \(6,\)"),
    ({"sample_weight": [1.0] * N}, TypeError, "sample_weight must be an array"),
    ({"sample_weight": 1.0}, TypeError, "sample_weight must be an array"),
    ({"sample_weight": np.ones(N, dtype=bool)}, TypeError, "sample_weight must have a real dtype"),
    ({"sample_weight": -np.ones(N)}, ValueError, "sample_weight must be >= 0"),
    ({"sample_weight": np.r_[1.0, 1.0, -1e-9, 1, 1, 1]}, ValueError, "sample_weight must be >= 0"),
    ({"sample_weight": np.full(N, np.nan)}, ValueError, "sample_weight must be >= 0.*nan"),
    ({"sample_weight": np.r_[1.0, np.nan, 1, 1, 1, 1]}, ValueError, "sample_weight.*nan"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), ERRORS)
def test_bad_target_input_is_named(kwargs, error, match):
    for function in FUNCTIONS:
        for chunk_size in (None, 2):
            with pytest.raises(error, match=match):
                function(Q, K, temperature=T, chunk_size=chunk_size, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"teacher": (TQ, TK)}, TypeError, "teacher must be a tuple of 3 arrays"),
        ({"teacher": (TQ, TK, TN[:4])}, ValueError, "teacher_negative_keys must have the rows"),
        ({"teacher": (TQ, TK, TN[:, :2])}, ValueError, "teacher's arrays must share one width"),
    ],
)
def test_the_teacher_has_negatives_exactly_when_the_call_does(kwargs, error, match):
    for function in FUNCTIONS:
        with pytest.raises(error, match=match):
            function(Q, K, NEG, **kwargs)


def test_classes_and_the_supervised_form_name_bad_targets():
    data = {"teacher", "sample_weight", "labels", "guide"}
    for options, error, match in (e for e in ERRORS if not data & set(e[0])):
        with pytest.raises(error, match=match):
            infonce_xp.InfoNCE(**options)
    for options, error, match in [
        ({"label_smoothing": 1.0}, ValueError, "label_smoothing"),
        ({"margin": float("nan")}, ValueError, "margin"),
        ({"label_smoothing": 0.1, "positives": "pairs"}, ValueError, "label_smoothing"),
    ]:
        with pytest.raises(error, match=match):
            infonce_xp.supervised_info_nce(Q, Y, **options)
        with pytest.raises(error, match=match):
            infonce_xp.SupervisedInfoNCE(**options)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(6,\)"):
        infonce_xp.supervised_info_nce(Q, Y, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="sample_weight must be >= 0"):
        infonce_xp.SupervisedInfoNCE()(Q, Y, sample_weight=-np.ones(N))


def test_integer_weights_are_accepted():
    w = np.array([0, 1, 2, 3, 1, 1])
    for function in FUNCTIONS:
        as_int, as_float = (function(Q, K, sample_weight=x) for x in (w, w.astype(np.float64)))
        if function is infonce_xp.info_nce_value_and_grad:
            (as_int, grads_int), (as_float, grads_float) = as_int, as_float
            np.testing.assert_allclose(grads_int.query, grads_float.query, rtol=1e-15)
        np.testing.assert_allclose(as_int, as_float, rtol=1e-15)


@pytest.mark.backends("torch")
@pytest.mark.parametrize(
    ("case", "name"),
    [
        ("numpy inputs, torch teacher", "teacher_query"),
        ("numpy inputs, one torch teacher array", "teacher_positive_key"),
        ("torch inputs, numpy teacher", "teacher_query"),
        ("numpy inputs, torch weights", "sample_weight"),
        ("torch inputs, numpy weights", "sample_weight"),
    ],
)
def test_targets_of_another_library_are_named(case, name):
    torch = pytest.importorskip("torch")
    tq, tk, q, k = (torch.asarray(x) for x in (TQ, TK, Q, K))
    args, kwargs = {
        "numpy inputs, torch teacher": ((Q, K), {"teacher": (tq, tk)}),
        "numpy inputs, one torch teacher array": ((Q, K), {"teacher": (TQ, tk)}),
        "torch inputs, numpy teacher": ((q, k), {"teacher": (TQ, TK)}),
        "numpy inputs, torch weights": ((Q, K), {"sample_weight": torch.ones(N)}),
        "torch inputs, numpy weights": ((q, k), {"sample_weight": np.ones(N)}),
    }[case]
    for function in FUNCTIONS:
        with pytest.raises(TypeError, match=f"one array library.* {name}: "):
            function(*args, **kwargs)


# Inputs untouched, zero weights -------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_numpy_inputs_untouched(chunk_size):
    for name in OPTIONS:
        for negatives in (False, True):
            every = extras(name, negatives=negatives)
            arrays = [Q.copy(), K.copy(), NEG.copy() if negatives else None]
            held = [*every.get("teacher", ()), every.get("sample_weight")]
            before = [None if a is None else a.copy() for a in (*arrays, *held)]
            for symmetric in (False, True):
                for function in FUNCTIONS:
                    function(*arrays, temperature=T, chunk_size=chunk_size, reduction="none",
                             symmetric=symmetric, in_batch_negatives=True, **every)  # fmt: skip
            for a, b in zip((*arrays, *held), before):
                if a is not None:
                    np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_torch_inputs_untouched(chunk_size):
    torch = pytest.importorskip("torch")
    import infonce_xp.torch as it

    for name in OPTIONS:
        every = extras(name, negatives=True)
        tensors = [torch.tensor(a, requires_grad=True) for a in (Q, K, NEG)]
        call = {}
        if "teacher" in every:
            call["teacher"] = tuple(torch.tensor(a) for a in every.pop("teacher"))
        if "sample_weight" in every:
            call["sample_weight"] = torch.tensor(every.pop("sample_weight"))
        held = [*tensors, *call.get("teacher", ()), call.get("sample_weight")]
        held = [x for x in held if x is not None]
        before = [(x.detach().clone(), x._version) for x in held]
        loss_fn = it.InfoNCE(
            T, chunk_size=chunk_size, symmetric=True, in_batch_negatives=True, **every
        )
        loss_fn(*tensors, **call).backward()
        infonce_xp.info_nce(*tensors, T, chunk_size=chunk_size, **every, **call).backward()
        for x, (copy, version) in zip(held, before):
            torch.testing.assert_close(x.detach(), copy, rtol=0, atol=0, msg=name)
            assert x._version == version, f"{name}: an input was written in place"


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("name", [o for o in OPTIONS if "sample_weight" not in OPTIONS[o]])
def test_all_zero_weights_give_zero_with_mean(backend, name, chunk_size):
    every = extras(name, negatives=True)
    if "teacher" in every:
        every["teacher"] = tuple(backend.asarrays(*every["teacher"]))
    zeros = backend.asarray(np.zeros(N))
    args = backend.asarrays(Q, K, NEG)
    for symmetric in (False, True):
        options = {"symmetric": symmetric, "in_batch_negatives": True, "chunk_size": chunk_size}
        loss = infonce_xp.info_nce(*args, T, sample_weight=zeros, **options, **every)
        backend.assert_close(loss, np.asarray(0.0), rtol=0, err_msg=f"{name}, {symmetric}")
        loss, grads = infonce_xp.info_nce_value_and_grad(
            *args, T, sample_weight=zeros, **options, **every
        )
        backend.assert_close(loss, np.asarray(0.0), rtol=0)
        for g in grads[:3]:
            backend.assert_close(g, np.zeros(g.shape), rtol=0, err_msg=f"{name}: gradient")


# JAX ----------------------------------------------------------------------------------------

JAX_OPTIONS = ["smoothing", "margin", "teacher", "weights", "debiased+hcl"]
JAX_OPTIONS += ["smoothing+margin+weights", "teacher+smoothing+margin", "debiased+margin+weights"]


def _jax_call(name, negatives):
    """A loss of (q, k, neg, teacher, weight), the options' numbers fixed, and its arrays."""
    import jax.numpy as jnp

    every = extras(name, negatives=negatives)
    teacher, weight = every.pop("teacher", None), every.pop("sample_weight", None)

    def loss(q, k, neg, teacher, weight, chunk_size=None):
        return infonce_xp.info_nce(q, k, neg, T, teacher=teacher, sample_weight=weight,
                                   chunk_size=chunk_size, **every)  # fmt: skip

    arrays = (jnp.asarray(Q), jnp.asarray(K), jnp.asarray(NEG) if negatives else None)
    teacher = None if teacher is None else tuple(jnp.asarray(a) for a in teacher)
    return loss, (*arrays, teacher, None if weight is None else jnp.asarray(weight)), every


@pytest.mark.backends("jax")
@pytest.mark.parametrize("negatives", [False, True])
@pytest.mark.parametrize("name", JAX_OPTIONS)
def test_jax_jit_and_grad(name, negatives):
    """jit (teacher and weights traced) equals eager, tiled or not; jax.grad equals the
    analytic backward of ``info_nce_value_and_grad`` on NumPy and on JAX arrays."""
    import jax

    jax.config.update("jax_enable_x64", True)
    loss, args, every = _jax_call(name, negatives)
    eager = loss(*args)
    for chunk_size in (None, 2):
        jitted = jax.jit(loss, static_argnames="chunk_size")(*args, chunk_size=chunk_size)
        np.testing.assert_allclose(jitted, eager, rtol=1e-12, err_msg=f"chunk_size={chunk_size}")
    argnums = (0, 1, 2) if negatives else (0, 1)
    got = jax.grad(loss, argnums=argnums)(*args)
    numpy_args = [None if a is None else np.asarray(a) for a in args[:3]]
    data = {"teacher": args[3], "sample_weight": args[4]}
    numpy_data = {"teacher": None if args[3] is None else tuple(map(np.asarray, args[3])),
                  "sample_weight": None if args[4] is None else np.asarray(args[4])}  # fmt: skip
    for inputs, call in ((args[:3], data), (numpy_args, numpy_data)):
        value, grads = infonce_xp.info_nce_value_and_grad(*inputs, T, **call, **every)
        np.testing.assert_allclose(value, eager, rtol=1e-12)
        for a, b in zip(got, grads):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.backends("jax")
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_jax_vmap_with_label_smoothing_equals_a_loop(chunk_size):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    qs, ks = jnp.asarray(np.random.default_rng(5).normal(size=(2, 3, N, D)))
    options = {"label_smoothing": 0.2, "margin": 0.1, "chunk_size": chunk_size}

    def loss(q, k):
        return infonce_xp.info_nce(q, k, temperature=T, reduction="none", **options)

    got = jax.vmap(loss)(qs, ks)
    want = jnp.stack([loss(q, k) for q, k in zip(qs, ks)])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    plain = jnp.stack(
        [infonce_xp.info_nce(q, k, temperature=T, reduction="none") for q, k in zip(qs, ks)]
    )
    assert not np.allclose(got, plain), "the options change the loss"


# Resident memory of the tiled call ------------------------------------------------------------

MIB = 1 << 20
# the import line of test_memory_tiled's child, replaced by wrappers that add each call's
# teacher (width spec["teacher_width"]) and weights (spec["weights"]), built before the probe
CHILD_IMPORT = "from infonce_xp import info_nce, info_nce_value_and_grad\n"
CHILD_EXTRAS = r"""
from infonce_xp import info_nce as _info_nce, info_nce_value_and_grad as _value_and_grad


def _extras(n):
    rng = np.random.default_rng(1)
    out = {}
    if spec.get("teacher_width"):
        shape = (n, spec["teacher_width"])
        out["teacher"] = tuple(rng.standard_normal(shape, dtype=np.float32) for _ in "qk")
    if spec.get("weights"):
        out["sample_weight"] = rng.uniform(0.0, 2.0, size=n).astype(np.float32)
    if spec["library"] == "torch":
        import torch

        out = {k: tuple(map(torch.asarray, v)) if isinstance(v, tuple) else torch.asarray(v)
               for k, v in out.items()}
    return out


_EXTRAS = {n: _extras(n) for n in (64, spec["n"])}  # the warm-up's rows, and the probe's


def info_nce(q, *args, **kw):
    return _info_nce(q, *args, **_EXTRAS[q.shape[0]], **kw)


def info_nce_value_and_grad(q, *args, **kw):
    return _value_and_grad(q, *args, **_EXTRAS[q.shape[0]], **kw)
"""
# name: (N, bound, spec); N = 32768 for two options, 8192 (a bound below one dense N x N
# float32 array, 256 MiB) for the rest, to keep the runtime down
PROBES = {
    "label_smoothing": (32768, 600, {"options": {"label_smoothing": 0.1}}),
    "teacher": (32768, 600, {"teacher_width": 64}),
    "margin": (8192, 200, {"options": {"margin": 0.2}}),
    "debiased+hcl": (8192, 200, {"options": {"debiased_prior": 0.1, "hardness_beta": 0.5}}),
    "sample_weight": (8192, 200, {"weights": True}),
}


@pytest.mark.slow
@pytest.mark.backends("torch")  # the torch session only: the child does not use the backend
@pytest.mark.parametrize("name", list(PROBES))
def test_tiled_call_with_each_option_peaks_below_its_bound(name, monkeypatch):
    """torch, D = 128, chunk_size=1024: the peak resident memory above the inputs (the teacher
    and weights among them) of one forward and backward, in a fresh process."""
    pytest.importorskip("torch")
    import test_memory_tiled

    clear_refs = test_memory_tiled.CLEAR_REFS
    if not os.access(clear_refs, os.W_OK):
        pytest.skip(f"the peak of one call needs a resettable VmHWM ({clear_refs} is not writable)")
    assert CHILD_IMPORT in test_memory_tiled.CHILD, "test_memory_tiled's child changed its import"
    monkeypatch.setattr(
        test_memory_tiled, "CHILD", test_memory_tiled.CHILD.replace(CHILD_IMPORT, CHILD_EXTRAS)
    )
    n, bound, spec = PROBES[name]
    got = test_memory_tiled.peaks("torch", n, 128, [1024], timeout=900, **spec)
    assert got[1024] < bound * MIB, f"{name}, N={n}: {got[1024] / MIB:.0f} MiB above the inputs"
