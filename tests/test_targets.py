"""Targets beyond one-hot, margins and weights (``label_smoothing``, ``teacher`` with
``teacher_temperature``, ``margin``, ``sample_weight``, ``debiased_prior``, ``hardness_beta``) on
every backend, alone and in pairs, against the float64 reference of ``reference_targets.py``,
finite differences and the tiled execution; the identities that tie them to the plain loss.

The reference is vouched for by ``torch.nn.functional.cross_entropy`` and joshr17/HCL in
``test_targets_oracles.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import infonce_xp
from _option_checks import assert_gradients_match_finite_differences, assert_tiled_equals_untiled
from reference_targets import target_loss
from test_recipes import F32, F64, on, problem

T = 0.3
EXACT = {"rtol": 0.0, "atol": 0.0}
CLOSE = {"rtol": 1e-12, "atol": 1e-12}
REDUCTIONS = ("none", "mean", "sum")
# name: (a case of test_recipes.CASES, its labels, positives)
SETUPS = {
    "in-batch": ("in-batch", None, "own"),
    "unpaired": ("unpaired", None, "own"),
    "paired": ("paired", None, "own"),
    "same-view+symmetric": ("same-view+symmetric", None, "own"),
    "symmetric": ("symmetric", None, "own"),
    "symmetric+negatives": ("symmetric+negatives", None, "own"),
    "labelled/own": ("in-batch+unpaired+labelled", "collide", "own"),
    "labelled/supcon": ("in-batch+unpaired+labelled", "collide", "supcon"),
    "labelled/pairs": ("in-batch+unpaired+labelled", "collide", "pairs"),
    "paired+labelled/supcon": ("paired+labelled", "collide", "supcon"),
    "symmetric/supcon": ("symmetric", "collide", "supcon"),
}
# name: options; "teacher" and "sample_weight" True stand for the arrays that ``data`` makes
OPTIONS = {
    "smoothing": {"label_smoothing": 0.2},
    "teacher": {"teacher": True},
    "teacher-sharp": {"teacher": True, "teacher_temperature": 0.25},
    "margin": {"margin": 0.3},
    "weights": {"sample_weight": True},
    "debiased": {"debiased_prior": 0.1},
    "hcl": {"hardness_beta": 0.7},
    "debiased+hcl": {"debiased_prior": 0.2, "hardness_beta": 1.5},
    "smoothing+margin": {"label_smoothing": 0.1, "margin": 0.2},
    "teacher+smoothing": {"teacher": True, "label_smoothing": 0.3, "teacher_temperature": 0.5},
    "teacher+margin": {"teacher": True, "margin": 0.25},
    "margin+debiased+hcl": {"margin": 0.2, "debiased_prior": 0.1, "hardness_beta": 0.5},
    "weights+smoothing": {"sample_weight": True, "label_smoothing": 0.2},
    "weights+teacher": {"sample_weight": True, "teacher": True, "teacher_temperature": 2.0},
    "weights+margin": {"sample_weight": True, "margin": 0.15},
    "weights+debiased+hcl": {"sample_weight": True, "debiased_prior": 0.3, "hardness_beta": 1.0},
}
DEBIASING = ("debiased_prior", "hardness_beta")


def valid(setup, option):
    """The contract's combinations: debiasing needs positives="own", "pairs" takes no
    label_smoothing or teacher."""
    positives, options = SETUPS[setup][2], OPTIONS[option]
    if any(options.get(name) for name in DEBIASING) and positives != "own":
        return False
    return not (positives == "pairs" and ("label_smoothing" in options or "teacher" in options))


def combinations(setups=SETUPS, options=OPTIONS):
    return [(s, o) for s in setups for o in options if valid(s, o)]


def data(setup, option, n=7):
    """NumPy (q, k, negatives), the recipe's options with positives, and the target options
    with the teacher's arrays (width 3, negatives exactly when the call has them) and weights
    (one of them 0)."""
    case, labels, positives = SETUPS[setup]
    arrays, options = problem(case, labels, n=n)
    options["positives"] = positives
    extras = dict(OPTIONS[option])
    rng = np.random.default_rng(11)
    if extras.get("teacher"):
        tq = rng.normal(size=(n, 3))
        tk = tq + rng.normal(size=(n, 3))
        neg = arrays[2]
        extras["teacher"] = (
            (tq, tk) if neg is None else (tq, tk, rng.normal(size=(*neg.shape[:-1], 3)))
        )
    if extras.get("sample_weight"):
        w = rng.uniform(0.0, 2.0, size=n)
        w[1] = 0.0
        extras["sample_weight"] = w
    return arrays, options, extras


def on_backend(backend, options, extras=None):
    """The options with their arrays (labels, teacher, weights) as arrays of ``backend``."""
    out = on(backend, {**options, **(extras or {})})
    if "teacher" in out:
        out["teacher"] = tuple(backend.asarrays(*out["teacher"]))
    if "sample_weight" in out:
        out["sample_weight"] = backend.asarray(out["sample_weight"])
    return out


# Values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("setup", "option"), combinations())
def test_values_match_reference(backend, setup, option):
    arrays, options, extras = data(setup, option)
    inputs = backend.asarrays(*arrays)
    for reduction in REDUCTIONS:
        got = infonce_xp.info_nce(
            *inputs, temperature=T, reduction=reduction, **on_backend(backend, options, extras)
        )
        want = target_loss(*arrays, temperature=T, reduction=reduction, **options, **extras)
        backend.assert_close(got, want, **F64, err_msg=f"{setup}, {option}, {reduction}")


@pytest.mark.parametrize(("setup", "option"), combinations())
def test_float32_values_match_reference(backend, setup, option):
    arrays, options, extras = data(setup, option)
    extras32 = dict(extras)
    if "teacher" in extras:
        extras32["teacher"] = tuple(a.astype(np.float32) for a in extras["teacher"])
    if "sample_weight" in extras:
        extras32["sample_weight"] = extras["sample_weight"].astype(np.float32)
    got = infonce_xp.info_nce(
        *backend.asarrays(*arrays, dtype="float32"),
        temperature=T,
        reduction="none",
        **on_backend(backend, options, extras32),
    )
    want = target_loss(*arrays, temperature=T, reduction="none", **options, **extras)
    backend.assert_close(got, want, **F32, dtype="float32")


def test_the_options_change_the_loss():
    """The checks above could not tell the options apart if they agreed: they do not."""
    values = {}
    for option in OPTIONS:
        arrays, options, extras = data("labelled/own", option)
        values[option] = float(target_loss(*arrays, temperature=T, **options, **extras))
    arrays, options, _ = data("labelled/own", "margin")
    values["plain"] = float(target_loss(*arrays, temperature=T, **options))
    assert len({round(v, 9) for v in values.values()}) == len(values), values


def test_the_clamp_of_the_estimator_is_reached(backend):
    """A strong prior drives some rows' Ng to its floor Q e^{-1/t}: l = log(1 + Q e^{-1/t -
    z_p}); the reference and the library agree there too."""
    (q, k, neg), _ = problem("unpaired", None)
    k = q.copy()  # s_p = 1: the prior's term outweighs the negatives'
    options = {"temperature": T, "reduction": "none", "debiased_prior": 0.9}
    got = infonce_xp.info_nce(*backend.asarrays(q, k, neg), **options)
    want = target_loss(q, k, neg, **options)
    floor = np.log1p(len(neg) * np.exp(-1 / T - 1 / T))
    assert np.isclose(want, floor, rtol=1e-12).any(), (want, floor)
    backend.assert_close(got, want, **F64)


@pytest.mark.parametrize("option", ["teacher", "teacher+smoothing"])
def test_the_teacher_is_normalised_like_the_model(backend, option):
    """normalize=True: scaling the teacher's rows changes nothing; normalize=False: its raw
    dot products are its similarities, as the model's are."""
    arrays, options, extras = data("symmetric+negatives", option)
    scales = [
        np.linspace(0.2, 5.0, a.size // a.shape[-1]).reshape(*a.shape[:-1], 1)
        for a in arrays
        if a is not None
    ]
    scaled = tuple(a * c for a, c in zip(extras["teacher"], scales))
    inputs = backend.asarrays(*arrays)
    for normalize in (True, False):
        every = {**options, **extras, "normalize": normalize}
        want = target_loss(*arrays, temperature=T, reduction="none", **every)
        got = infonce_xp.info_nce(
            *inputs, temperature=T, reduction="none", **on_backend(backend, every)
        )
        backend.assert_close(got, want, **F64, err_msg=f"normalize={normalize}")
        every["teacher"] = scaled
        moved = infonce_xp.info_nce(
            *inputs, temperature=T, reduction="none", **on_backend(backend, every)
        )
        want_moved = target_loss(*arrays, temperature=T, reduction="none", **every)
        backend.assert_close(moved, want_moved, **F64, err_msg=f"normalize={normalize}, scaled")
        assert np.allclose(want_moved, want, rtol=1e-12) == normalize


# Gradients ------------------------------------------------------------------------------

GRAD_SETUPS = ("unpaired", "paired", "same-view+symmetric", "labelled/own", "labelled/supcon")


@pytest.mark.parametrize(("setup", "option"), combinations(GRAD_SETUPS))
def test_gradients_match_finite_differences(backend, setup, option):
    """The analytic backward, the debiasing weights w included (they are not detached)."""
    arrays, options, extras = data(setup, option, n=5)
    core = on_backend(backend, options, extras)
    reference = {**options, **extras}
    assert_gradients_match_finite_differences(backend, arrays, core, reference, T, loss=target_loss)


@pytest.mark.parametrize(("setup", "option"), combinations(("labelled/pairs", "symmetric")))
def test_gradients_with_pairs_and_symmetric(backend, setup, option):
    arrays, options, extras = data(setup, option, n=5)
    core = on_backend(backend, options, extras)
    assert_gradients_match_finite_differences(
        backend, arrays, core, {**options, **extras}, T, loss=target_loss
    )


# Tiles ----------------------------------------------------------------------------------


# every option on two setups, a few on the others (the tiled path compiles slowly under jax)
TILED = combinations(("same-view+symmetric", "labelled/own")) + combinations(
    ("paired", "labelled/supcon", "labelled/pairs"),
    {o: OPTIONS[o] for o in ("teacher+smoothing", "weights+margin", "margin+debiased+hcl")},
)


@pytest.mark.parametrize(("setup", "option"), TILED)
def test_tiled_equals_untiled(backend, setup, option):
    arrays, options, extras = data(setup, option)
    core = on_backend(backend, options, extras)
    assert_tiled_equals_untiled(backend, arrays, core, T, 3)


@pytest.mark.parametrize("chunk_size", [1, 4])
@pytest.mark.parametrize("option", ["teacher+smoothing", "weights+debiased+hcl"])
def test_tiled_with_other_chunk_sizes(backend, option, chunk_size):
    arrays, options, extras = data("labelled/own", option)
    core = on_backend(backend, options, extras)
    assert_tiled_equals_untiled(backend, arrays, core, T, chunk_size)


# Identities -----------------------------------------------------------------------------

OWN_SETUPS = [s for s, (_, _, positives) in SETUPS.items() if positives == "own"]


def _value_and_grads(backend, arrays, options, **kw):
    return infonce_xp.info_nce_value_and_grad(
        *backend.asarrays(*arrays),
        temperature=backend.asarray(np.asarray(T)),
        reduction=kw.pop("reduction", "none"),
        grad_output=kw.pop("grad_output", backend.asarray(np.linspace(0.5, 1.5, len(arrays[0])))),
        **on_backend(backend, options, kw),
    )


def _assert_same(backend, a, b, tolerance):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    backend.assert_close(loss_a, loss_b, **tolerance)
    for x, y in zip(grads_a, grads_b):
        assert (x is None) == (y is None)
        if y is not None:
            backend.assert_close(x, y, **tolerance)


@pytest.mark.parametrize("setup", OWN_SETUPS)
def test_zero_prior_and_beta_are_the_plain_loss_exactly(backend, setup):
    arrays, options, _ = data(setup, "debiased")
    plain = _value_and_grads(backend, arrays, options)
    zero = _value_and_grads(backend, arrays, options, debiased_prior=0.0, hardness_beta=0.0)
    _assert_same(backend, zero, plain, EXACT)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_zero_smoothing_and_margin_are_the_plain_loss(backend, setup):
    arrays, options, _ = data(setup, "smoothing")
    plain = _value_and_grads(backend, arrays, options)
    for extra in ({"label_smoothing": 0.0}, {"margin": 0.0}):
        _assert_same(backend, _value_and_grads(backend, arrays, options, **extra), plain, CLOSE)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("setup", list(SETUPS))
def test_unit_weights_are_unweighted(backend, setup, reduction):
    arrays, options, _ = data(setup, "weights")
    grad_output = backend.asarray(np.asarray(1.7) if reduction != "none" else np.ones(7))
    common = {"reduction": reduction, "grad_output": grad_output}
    plain = _value_and_grads(backend, arrays, options, **common)
    ones = _value_and_grads(backend, arrays, options, sample_weight=np.ones(7), **common)
    _assert_same(backend, ones, plain, CLOSE)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_zero_weights_give_zero_not_nan(backend, setup):
    arrays, options, _ = data(setup, "weights")
    zeros = np.zeros(7)
    for reduction in REDUCTIONS:
        shape = (7,) if reduction == "none" else ()
        loss, grads = _value_and_grads(
            backend,
            arrays,
            options,
            sample_weight=zeros,
            reduction=reduction,
            grad_output=backend.asarray(np.ones(shape)),
        )
        backend.assert_close(loss, np.zeros(shape), **EXACT, err_msg=reduction)
        for g in grads:
            if g is not None:
                backend.assert_close(g, np.zeros(g.shape), atol=1e-300, err_msg=reduction)


@pytest.mark.parametrize("setup", ["labelled/own", "labelled/pairs", "same-view+symmetric"])
def test_mean_is_invariant_to_the_scale_of_the_weights(backend, setup):
    arrays, options, extras = data(setup, "weights")
    w = extras["sample_weight"]
    once, scaled = (
        infonce_xp.info_nce(
            *backend.asarrays(*arrays),
            temperature=T,
            **on_backend(backend, options, {"sample_weight": c * w}),
        )
        for c in (1.0, 37.5)
    )
    backend.assert_close(scaled, once, rtol=1e-13)


# The classes ----------------------------------------------------------------------------

CONSTRUCTED = ("label_smoothing", "teacher_temperature", "margin", *DEBIASING)
CALL = ("labels", "negative_labels", "teacher", "sample_weight")


@pytest.mark.parametrize("option", ["teacher+smoothing", "weights+margin", "weights+debiased+hcl"])
def test_class_api_matches_function(backend, option):
    arrays, options, extras = data("labelled/own", option)
    every = on_backend(backend, options, extras)
    constructor = {n: v for n, v in every.items() if n not in CALL}
    call = {n: v for n, v in every.items() if n in CALL}
    inputs = backend.asarrays(*arrays)
    loss_fn = infonce_xp.InfoNCE(T, "none", **constructor)
    expected = infonce_xp.info_nce(*inputs, T, "none", **every)
    backend.assert_close(loss_fn(*inputs, **call), expected, rtol=1e-15)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("option", ["teacher+smoothing", "weights+margin", "weights+debiased+hcl"])
def test_torch_module_gradients(option, chunk_size):
    """infonce_xp.torch.InfoNCE through autograd: the reference's value, finite differences'
    gradients, and none to the teacher nor to the weights."""
    import torch

    import infonce_xp.torch as itorch
    from reference import finite_difference

    (q, k, neg), options, extras = data("labelled/own", option, n=5)
    leaves = [torch.tensor(a, requires_grad=True) for a in (q, k, neg)]
    data_args = {n: torch.asarray(v) for n, v in options.items() if n.endswith("labels")}
    if "teacher" in extras:
        data_args["teacher"] = tuple(torch.tensor(a, requires_grad=True) for a in extras["teacher"])
    if "sample_weight" in extras:
        data_args["sample_weight"] = torch.tensor(extras["sample_weight"], requires_grad=True)
    constructor = {n: v for n, v in extras.items() if n in CONSTRUCTED}
    other = {n: v for n, v in options.items() if not n.endswith("labels")}
    loss_fn = itorch.InfoNCE(T, chunk_size=chunk_size, **other, **constructor)
    assert isinstance(loss_fn, torch.nn.Module)
    loss = loss_fn(*leaves, **data_args)
    loss.backward()
    reference = {**options, **extras}
    np.testing.assert_allclose(
        loss.item(), target_loss(q, k, neg, temperature=T, **reference), **F64
    )
    arrays = [q, k, neg]
    for index, leaf in enumerate(leaves):

        def value(x, index=index):
            moved = [x if j == index else a for j, a in enumerate(arrays)]
            return float(target_loss(*moved, temperature=T, **reference))

        fd = finite_difference(value, arrays[index])
        np.testing.assert_allclose(leaf.grad.numpy(), fd, rtol=1e-6, atol=1e-8)
    held = [*data_args.get("teacher", ()), data_args.get("sample_weight")]
    for x in (x for x in held if x is not None):
        assert x.grad is None or not x.grad.any(), "teacher and weights get no gradient"


@pytest.mark.backends("jax")
@pytest.mark.parametrize("option", ["teacher+smoothing", "weights+margin", "weights+debiased+hcl"])
def test_jax_jit(option):
    import jax

    jax.config.update("jax_enable_x64", True)
    arrays, options, extras = data("same-view+symmetric", option)
    every = {**options, **extras}
    arrays_jax = [jax.numpy.asarray(a) for a in arrays if a is not None]
    teacher = extras.get("teacher")
    weight = extras.get("sample_weight")
    scalars = {n: v for n, v in every.items() if n not in ("teacher", "sample_weight")}

    @jax.jit
    def loss(q, k, teacher, weight):
        return infonce_xp.info_nce(
            q, k, temperature=T, teacher=teacher, sample_weight=weight, **scalars
        )

    got = loss(
        *arrays_jax,
        None if teacher is None else tuple(jax.numpy.asarray(a) for a in teacher),
        None if weight is None else jax.numpy.asarray(weight),
    )
    np.testing.assert_allclose(
        float(got), float(target_loss(*arrays, temperature=T, **every)), **F64
    )
