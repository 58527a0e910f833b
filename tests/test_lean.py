"""The lean execution of one-positive plans (``_lean.py``): which calls get it, and that it
gives the general execution's numbers (values, every gradient, a learned temperature, some
gradients only) on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from infonce_xp import Options, _call, _lean, _stacks
from infonce_xp._engine import Plan
from reference import seed

RNG = np.random.default_rng(5)
Q, K = RNG.standard_normal((2, 6, 4))
NEG = RNG.standard_normal((5, 4))
PAIRED = RNG.standard_normal((6, 3, 4))
WEIGHTS = RNG.uniform(0.5, 2.0, 6)
LABELS = np.array([0, 1, 0, 2, 1, 0])

LEAN = [
    dict(),
    dict(negatives=NEG),
    dict(negatives=PAIRED, mode="paired"),
    dict(symmetric=True),
    dict(normalize=False),
    dict(reduction="sum", symmetric=True, normalize=False),
    dict(reduction="none", negatives=NEG),
]
GENERAL = [
    dict(sample_weight=WEIGHTS),
    dict(chunk_size=2),
    dict(labels=LABELS),
    dict(negatives=NEG, in_batch_negatives=True),
]


def call_of(backend, negatives=None, labels=None, sample_weight=None, dtype=None, **options):
    opts = Options.of(
        0.1, options.pop("reduction", "mean"), options.pop("mode", "unpaired"), options
    )
    q, k, neg, lab, w = backend.asarrays(Q, K, negatives, None, sample_weight, dtype=dtype)
    if labels is not None:
        lab = backend.asarray(labels)
    return _call.check_call(opts, q, k, negative_keys=neg, labels=lab, sample_weight=w)


@pytest.mark.parametrize("case", LEAN)
def test_one_positive_calls_take_the_lean_execution(backend, case):
    plan = call_of(backend, **case).plan
    assert isinstance(plan.execution, _lean.Lean)


@pytest.mark.parametrize("case", GENERAL)
def test_other_calls_take_the_general_one(backend, case):
    plan = call_of(backend, **case).plan
    assert plan.execution is plan


def test_half_precision_is_cast_by_the_general_execution(backend):
    plan = call_of(backend, dtype="float16").plan  # skips where the backend has no float16
    assert plan.execution is plan


@pytest.mark.parametrize("limit", [1, 1 << 15])  # a stack per array, or one for all
@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("case", LEAN)
def test_the_lean_execution_gives_the_general_ones_numbers(backend, monkeypatch, case, learned,
                                                           limit):  # fmt: skip
    monkeypatch.setattr(_stacks, "STACK_LIMIT", limit)
    monkeypatch.setattr(_call, "_CHECKED", {})  # plans made under another limit
    call = call_of(backend, **case)
    xp, lean, plan = call.xp, call.plan.execution, call.plan
    t = backend.asarray(np.asarray(0.3)) if learned else 0.3
    arrays = dict(call.arrays)
    n = Q.shape[0]
    grad = backend.asarray(RNG.uniform(0.5, 1.5, n)) if case.get("reduction") == "none" else None
    names = [k for k in arrays]
    for wanted in (None, {names[0]}, set(names[1:])):
        loss, residuals = lean.forward(xp, arrays, t, 0)
        want_loss, want_residuals = plan.forward(xp, arrays, t, 0)
        grads = lean.backward(xp, lean.load(arrays, lean.save(residuals, True), True), grad, t,
                              0, wanted=wanted)  # fmt: skip
        want = plan.backward(xp, want_residuals, grad, t, 0, wanted=wanted)
        backend.assert_close(loss, backend.to_numpy(want_loss), rtol=1e-12, atol=1e-14)
        expected = set(names if wanted is None else wanted) | (
            {"temperature"} if learned else set()
        )
        assert set(grads) == expected
        for name, g in grads.items():
            backend.assert_close(g, backend.to_numpy(want[name]), rtol=1e-11, atol=1e-13)


def test_the_lean_execution_gives_the_seeds_numbers(backend):
    from infonce_xp import info_nce_value_and_grad

    for mode, neg in (("unpaired", None), ("unpaired", NEG), ("paired", PAIRED)):
        loss, grads = info_nce_value_and_grad(
            *backend.asarrays(Q, K, neg), negative_mode=mode, temperature=0.2
        )
        want, want_grads = seed(Q, K, neg, temperature=0.2, mode=mode, grad=True)
        np.testing.assert_allclose(backend.to_numpy(loss), want, rtol=1e-10)
        for got, ref in zip(grads, want_grads):
            if ref is not None:
                np.testing.assert_allclose(backend.to_numpy(got), ref, rtol=1e-9, atol=1e-12)


def test_a_plan_is_lean_by_what_its_call_holds():
    """Sample weights are part of the plan's identity: the same arrays with and without them
    get different plans (one lean, one not)."""
    import array_api_compat.numpy as xp

    from infonce_xp._directions import SAMPLE_WEIGHT

    assert SAMPLE_WEIGHT not in ("query", "positive_key")
    config = _call.check_call(Options(), Q, K).plan.config
    floats = {"query": Q, "positive_key": K}
    plain = Plan(xp, config, False, "mean", Q.dtype, floats)
    weighted = Plan(xp, config, False, "mean", Q.dtype, floats, weighted=True)
    assert plain != weighted
    assert isinstance(plain.execution, _lean.Lean) and weighted.execution is weighted


@pytest.mark.backends("torch")
@pytest.mark.parametrize("options", [dict(), dict(normalize=False), dict(symmetric=True)])
def test_torch_transforms_and_double_backward_through_the_lean_execution(options):
    """``torch.func`` (the Function returns the residuals: the unit rows are views of a stack,
    and without normalisation they are the inputs themselves) and ``create_graph=True`` (the
    backward recomputes the residuals under autograd) give the general execution's numbers."""
    import torch

    from infonce_xp import info_nce

    func = torch.func
    gen = torch.Generator().manual_seed(2)
    qs, ks = (
        torch.randn(3, 6, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, 6, 5, generator=gen, dtype=torch.float64),
    )

    def loss(q, k):
        return info_nce(q, k, **options)

    def general(q, k):  # the same call on the plan's own execution
        call = _call.check_call(Options.of(0.1, "mean", "unpaired", dict(options)), q, k)
        return call.plan.forward(call.xp, dict(call.arrays), 0.1)[0]

    assert isinstance(_call.check_call(Options(**options), qs[0], ks[0]).plan.execution, _lean.Lean)
    got = func.vmap(func.grad(loss, argnums=(0, 1)))(qs, ks)
    want = func.vmap(func.grad(general, argnums=(0, 1)))(qs, ks)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    q, k = (x.clone().requires_grad_() for x in (qs[0], ks[0]))
    (g,) = torch.autograd.grad(loss(q, k), q, create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), k)
    q2, k2 = (x.clone().requires_grad_() for x in (qs[0], ks[0]))
    (g2,) = torch.autograd.grad(general(q2, k2), q2, create_graph=True)
    (gg2,) = torch.autograd.grad((g2 * g2).sum(), k2)
    torch.testing.assert_close(g, g2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gg, gg2, rtol=1e-10, atol=1e-12)
