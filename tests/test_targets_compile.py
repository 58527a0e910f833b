"""Targets beyond one-hot under torch's machinery: ``infonce_xp.torch.InfoNCE`` with a learned
temperature, ``torch.compile(fullgraph=True)``, ``torch.func.grad`` and autocast, each against
eager ``info_nce`` (itself checked against the float64 reference in ``test_targets.py``)."""

from __future__ import annotations

import pytest

import infonce_xp

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.backends("torch")

N, M, D, T = 8, 5, 5, 0.3

# name: (options, with teacher arrays, with weights)
COMBOS = {
    "smoothing+margin": ({"label_smoothing": 0.1, "margin": 0.2}, False, False),
    "smoothing+margin+weights": ({"label_smoothing": 0.1, "margin": 0.2}, False, True),
    "teacher+smoothing": ({"teacher_temperature": 0.5, "label_smoothing": 0.1}, True, False),
    "teacher+margin+weights": ({"margin": 0.15}, True, True),
    "debiased+hcl+margin": ({"debiased_prior": 0.1, "hardness_beta": 0.5, "margin": 0.1}, 0, 0),
    "debiased+hcl+weights": ({"debiased_prior": 0.2, "hardness_beta": 1.0}, False, True),
}


def inputs(dtype=torch.float64, negatives=True, seed=0):
    """(q, k, neg) and the call data (teacher of width 3, weights with a 0) of every combo."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(N, D, generator=gen, dtype=dtype)
    k = q + torch.randn(N, D, generator=gen, dtype=dtype)
    neg = torch.randn(M, D, generator=gen, dtype=dtype) if negatives else None
    teacher = tuple(torch.randn(m, 3, generator=gen, dtype=dtype) for m in (N, N, M))
    w = torch.rand(N, generator=gen, dtype=dtype) * 2
    w[1] = 0.0
    return (q, k, neg), {"teacher": teacher if negatives else teacher[:2], "sample_weight": w}


def call_data(name, data):
    _, with_teacher, with_weights = COMBOS[name]
    return {n: v for n, v in data.items() if {"teacher": with_teacher}.get(n, with_weights)}


def leaves(arrays):
    return [None if a is None else a.detach().clone().requires_grad_() for a in arrays]


def grads_of(xs):
    return [None if x is None else x.grad for x in xs]


# The module with a learned temperature -------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("name", list(COMBOS))
def test_learned_temperature_module_matches_the_function(name, symmetric, chunk_size):
    """loss.backward() through ``InfoNCE(learn_temperature=True, ...)``: finite gradients for
    the inputs and the temperature's Parameter, equal to the untiled ``info_nce`` called with
    the module's temperature tensor."""
    import infonce_xp.torch as it

    options = COMBOS[name][0]
    arrays, data = inputs()
    call = call_data(name, data)
    recipe = {"symmetric": symmetric, "in_batch_negatives": True}
    loss_fn = it.InfoNCE(
        T, learn_temperature=True, chunk_size=chunk_size, **recipe, **options
    ).double()
    parameter = loss_fn.log_inverse_temperature
    ours = leaves(arrays)
    loss = loss_fn(*ours, **call)
    loss.backward()
    got = [loss.detach(), *grads_of(ours), parameter.grad.clone()]
    assert all(bool(g.isfinite().all()) for g in got), name
    assert parameter.grad != 0, "the temperature gets a gradient"
    parameter.grad = None
    theirs = leaves(arrays)
    want = infonce_xp.info_nce(
        *theirs, temperature=loss_fn.temperature, **recipe, **options, **call
    )
    want.backward()
    for a, b in zip(got, [want.detach(), *grads_of(theirs), parameter.grad]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


# torch.compile --------------------------------------------------------------------------------


def compiled_and_eager(fn, arrays, *rest):
    """fn compiled (fullgraph) and eager on fresh leaves: [loss, input gradients...] each."""
    torch._dynamo.reset()
    out = []
    for f in (torch.compile(fn, fullgraph=True), fn):
        xs = leaves(arrays)
        loss = f(*xs, *rest)
        loss.backward()
        out.append([loss.detach(), *(x.grad for x in xs)])
    return out


def test_compile_with_smoothing_margin_weights_and_teacher():
    (q, k, neg), data = inputs()

    def f(q, k, neg, w, tq, tk, tn):
        return infonce_xp.info_nce(q, k, neg, T, label_smoothing=0.1, margin=0.2, sample_weight=w,
                                   teacher=(tq, tk, tn), teacher_temperature=0.5)  # fmt: skip

    got, want = compiled_and_eager(f, (q, k, neg), data["sample_weight"], *data["teacher"])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    plain = infonce_xp.info_nce(q, k, neg, T, sample_weight=data["sample_weight"])
    assert not torch.isclose(got[0], plain), "the options change the loss"


def test_compile_of_the_debiased_loss():
    (q, k, neg), data = inputs()

    def f(q, k, neg, w):
        return infonce_xp.info_nce(q, k, neg, T, debiased_prior=0.1, hardness_beta=0.5,
                                   margin=0.1, sample_weight=w)  # fmt: skip

    got, want = compiled_and_eager(f, (q, k, neg), data["sample_weight"])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# inductor's code generation for the tiled graph took 18-24 s here: slow; aot_eager captures
# the same graph (fullgraph) and its autograd in about 10 s
@pytest.mark.parametrize(
    "compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]
)
def test_compile_of_the_tiled_call_with_a_learned_temperature(compiler):
    """The module (a Parameter temperature, chunk_size) compiled: eager's loss and gradients,
    the Parameter's included."""
    import infonce_xp.torch as it

    (q, k, neg), data = inputs()
    loss_fn = it.InfoNCE(T, learn_temperature=True, chunk_size=3, label_smoothing=0.1,
                         margin=0.2).double()  # fmt: skip
    results = []
    torch._dynamo.reset()
    for f in (torch.compile(loss_fn, fullgraph=True, backend=compiler), loss_fn):
        loss_fn.zero_grad()
        xs = leaves((q, k, neg))
        loss = f(*xs, teacher=data["teacher"], sample_weight=data["sample_weight"])
        loss.backward()
        results.append([loss.detach(), *grads_of(xs), loss_fn.log_inverse_temperature.grad])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# torch.func -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("name", ["smoothing+margin+weights", "teacher+smoothing"])
def test_torch_func_grad_equals_autograd(name, chunk_size):
    from torch import func

    options = COMBOS[name][0]
    (q, k, neg), data = inputs()
    call = call_data(name, data)

    def f(q, k):  # a function of the loss, not the loss itself
        per_row = infonce_xp.info_nce(q, k, neg, T, "none", chunk_size=chunk_size, **options,
                                      **call)  # fmt: skip
        return (per_row**2).sum()

    got = func.grad(f, argnums=(0, 1))(q, k)
    xs = leaves((q, k))
    f(*xs).backward()
    for a, b in zip(got, grads_of(xs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# Autocast -------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("name", list(COMBOS))
def test_autocast_as_the_plain_loss(name, chunk_size):
    """bfloat16 embeddings from a Linear under CPU autocast, backward outside it: the loss has
    the plain loss's dtype, is finite, and is float32 eager's within bfloat16's precision."""
    options = COMBOS[name][0]
    (q, k, neg), data = inputs(torch.float32)
    call = call_data(name, data)
    results = {}
    for option, autocast in ((False, True), (True, True), (True, False)):
        torch.manual_seed(0)
        lin = torch.nn.Linear(D, D)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            x = lin(q)
            assert x.dtype == (torch.bfloat16 if autocast else torch.float32)
            extra = {**options, **call} if option else {}
            loss = infonce_xp.info_nce(x, k, neg, T, chunk_size=chunk_size, **extra)
        loss.backward()
        results[option, autocast] = loss.detach(), lin.weight.grad
    (plain, _), (ours, grad), (eager, eager_grad) = results.values()
    assert ours.dtype == plain.dtype and ours.dtype in (torch.float32, torch.float64), ours.dtype
    assert bool(ours.isfinite()) and bool(grad.isfinite().all()), name
    torch.testing.assert_close(ours.float(), eager, rtol=3e-2, atol=1e-2)
    torch.testing.assert_close(grad, eager_grad, rtol=5e-2, atol=2e-2)


@pytest.mark.parametrize("name", list(COMBOS))
def test_bfloat16_inputs_give_the_plain_losss_dtype(name):
    """bfloat16 inputs (no autocast), the teacher and weights in float32: the loss and the
    gradients have the dtype they have without the options, and are finite."""
    options = COMBOS[name][0]
    arrays, data = inputs(torch.float32)
    call = call_data(name, data)
    out = []
    for extra in ({}, {**options, **call}):
        xs = leaves([a.to(torch.bfloat16) for a in arrays])
        loss = infonce_xp.info_nce(*xs, T, **extra)
        loss.backward()
        out.append((loss, grads_of(xs)))
    (plain, plain_grads), (ours, grads) = out
    assert ours.dtype == plain.dtype, (ours.dtype, plain.dtype)
    assert bool(ours.isfinite())
    for a, b in zip(grads, plain_grads):
        assert a.dtype == b.dtype and bool(a.isfinite().all())
