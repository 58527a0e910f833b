"""The sigmoid loss under torch's machinery: ``infonce_xp.torch.SigmoidLoss`` with a learned
temperature and bias (SigLIP's init, Parameters, state_dict, gradients against finite
differences of the float64 reference), ``torch.compile(fullgraph=True)``, ``torch.func.grad``
and autocast, each against eager ``sigmoid_loss`` (itself checked in ``test_sigmoid.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import infonce_xp
from reference import finite_difference
from reference_sigmoid import siglip_reference

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.backends("torch")

N, D = 8, 5
F64 = {"rtol": 1e-10, "atol": 1e-10}
FD = {"rtol": 1e-6, "atol": 1e-8}
LABELS = np.array([0, 1, 0, 2, 1, 0, 3, 2])


def inputs(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(N, D, generator=gen, dtype=dtype)
    return q, q + torch.randn(N, D, generator=gen, dtype=dtype)


def leaves(arrays):
    return [a.detach().clone().requires_grad_() for a in arrays]


# The module -------------------------------------------------------------------------------


def test_learned_parameters_start_at_siglips_init():
    import infonce_xp.torch as it

    loss_fn = it.SigmoidLoss(learn_temperature=True, learn_bias=True)
    assert isinstance(loss_fn, torch.nn.Module)
    parameters = dict(loss_fn.named_parameters())
    assert set(parameters) == {"log_inverse_temperature", "bias"}, set(parameters)
    assert isinstance(loss_fn.log_inverse_temperature, torch.nn.Parameter)
    assert isinstance(loss_fn.bias, torch.nn.Parameter)
    assert loss_fn.log_inverse_temperature.shape == () and loss_fn.bias.shape == ()
    assert math.isclose(loss_fn.log_inverse_temperature.item(), math.log(10), rel_tol=1e-6)
    assert loss_fn.bias.item() == -10.0
    assert set(loss_fn.state_dict()) == {"log_inverse_temperature", "bias"}
    # another init, one of them learned
    loss_fn = it.SigmoidLoss(0.5, -3.0, learn_temperature=True)
    assert set(dict(loss_fn.named_parameters())) == {"log_inverse_temperature"}
    assert math.isclose(loss_fn.log_inverse_temperature.item(), math.log(2), rel_tol=1e-6)
    loss_fn = it.SigmoidLoss(0.5, -3.0, learn_bias=True)
    assert set(dict(loss_fn.named_parameters())) == {"bias"}
    assert loss_fn.bias.item() == -3.0
    assert list(it.SigmoidLoss().parameters()) == []


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("labelled", [False, True])
def test_fixed_module_equals_the_function(labelled, chunk_size):
    import infonce_xp.torch as it

    q, k = inputs()
    labels = torch.asarray(LABELS) if labelled else None
    loss_fn = it.SigmoidLoss(0.3, -2.0, "none", chunk_size=chunk_size)
    got = loss_fn(q, k, labels=labels)
    want = infonce_xp.sigmoid_loss(q, k, 0.3, -2.0, "none", labels=labels)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        got.numpy(),
        siglip_reference(
            q.numpy(), k.numpy(), 0.3, -2.0, LABELS if labelled else None, True, "none"
        ),
        **F64,
    )


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("labelled", [False, True])
def test_gradients_reach_the_learned_parameters(labelled, chunk_size):
    """loss.backward() through the module: the inputs', log(1/t)'s and the bias's gradients
    are finite differences of the reference at t = exp(-log_inverse_temperature)."""
    import infonce_xp.torch as it

    q, k = inputs()
    labels = LABELS if labelled else None
    loss_fn = it.SigmoidLoss(
        0.3, -2.0, learn_temperature=True, learn_bias=True, chunk_size=chunk_size
    ).double()
    xs = leaves((q, k))
    loss = loss_fn(*xs, labels=None if labels is None else torch.asarray(labels))
    loss.backward()
    p, b = loss_fn.log_inverse_temperature, loss_fn.bias
    assert p.grad is not None and b.grad is not None
    assert p.grad != 0 and b.grad != 0
    qn, kn = q.numpy(), k.numpy()
    p0, b0 = p.item(), b.item()

    def value(q=qn, k=kn, p=p0, b=b0):
        return float(siglip_reference(q, k, math.exp(-float(p)), float(b), labels))

    np.testing.assert_allclose(loss.item(), value(), **F64)
    wanted = {
        "query": finite_difference(lambda x: value(q=x), qn),
        "key": finite_difference(lambda x: value(k=x), kn),
        "log_inverse_temperature": finite_difference(lambda x: value(p=x), np.asarray(p0)),
        "bias": finite_difference(lambda x: value(b=x), np.asarray(b0)),
    }
    got = dict(zip(wanted, [xs[0].grad, xs[1].grad, p.grad, b.grad]))
    for name, fd in wanted.items():
        np.testing.assert_allclose(got[name].numpy(), fd, **FD, err_msg=name)


def test_state_dict_round_trip():
    """Trained values load into a fresh module, which then gives the function's loss with
    temperature exp(-log_inverse_temperature) and that bias."""
    import infonce_xp.torch as it

    q, k = inputs()
    trained = it.SigmoidLoss(learn_temperature=True, learn_bias=True).double()
    with torch.no_grad():
        trained.log_inverse_temperature.fill_(math.log(3.0))
        trained.bias.fill_(-1.5)
    fresh = it.SigmoidLoss(learn_temperature=True, learn_bias=True).double()
    fresh.load_state_dict(trained.state_dict())
    got = fresh(q, k)
    want = infonce_xp.sigmoid_loss(q, k, 1 / 3.0, -1.5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        got.item(), siglip_reference(q.numpy(), k.numpy(), 1 / 3.0, -1.5), **F64
    )


def test_an_optimizer_step_moves_the_parameters():
    import infonce_xp.torch as it

    q, k = inputs(torch.float32)
    loss_fn = it.SigmoidLoss(learn_temperature=True, learn_bias=True)
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    before = [p.detach().clone() for p in loss_fn.parameters()]
    loss_fn(q, k).backward()
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, loss_fn.parameters()))


# torch.compile --------------------------------------------------------------------------------


def test_compile_of_the_function_equals_eager():
    torch._dynamo.reset()
    q, k = inputs()
    labels = torch.asarray(LABELS)
    t, b = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)

    def f(q, k, t, b):
        return infonce_xp.sigmoid_loss(q, k, t, b, labels=labels)

    results = []
    for fn in (torch.compile(f, fullgraph=True), f):
        xs = leaves((q, k, t, b))
        loss = fn(*xs)
        loss.backward()
        results.append([loss.detach(), *(x.grad for x in xs)])
    for a, b_ in zip(*results):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


# inductor's code generation for a tiled graph is slow on CPU; aot_eager captures the same graph
# (fullgraph) and its autograd
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_compile_of_the_learned_module_equals_eager(chunk_size):
    import infonce_xp.torch as it

    q, k = inputs()
    labels = torch.asarray(LABELS)
    loss_fn = it.SigmoidLoss(
        learn_temperature=True, learn_bias=True, chunk_size=chunk_size
    ).double()
    results = []
    torch._dynamo.reset()
    for fn in (torch.compile(loss_fn, fullgraph=True, backend="aot_eager"), loss_fn):
        loss_fn.zero_grad()
        xs = leaves((q, k))
        loss = fn(*xs, labels=labels)
        loss.backward()
        results.append(
            [loss.detach(), *(x.grad for x in xs), loss_fn.log_inverse_temperature.grad,
             loss_fn.bias.grad]
        )  # fmt: skip
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# torch.func -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_torch_func_grad_equals_autograd(chunk_size):
    from torch import func

    q, k = inputs()
    labels = torch.asarray(LABELS)
    t, b = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)

    def f(q, k, t, b):  # a function of the loss, not the loss itself
        rows = infonce_xp.sigmoid_loss(q, k, t, b, "none", labels=labels, chunk_size=chunk_size)
        return (rows**2).sum()

    got = func.grad(f, argnums=(0, 1, 2, 3))(q, k, t, b)
    xs = leaves((q, k, t, b))
    f(*xs).backward()
    for name, a, x in zip(("query", "key", "temperature", "bias"), got, xs):
        torch.testing.assert_close(a, x.grad, rtol=1e-12, atol=1e-14, msg=name)


# Autocast -------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_autocast(chunk_size):
    """bfloat16 embeddings from a Linear under CPU autocast, backward outside it: the loss has
    the dtype that ``info_nce`` gives there, is finite, and is float32 eager's within
    bfloat16's precision; so are the Linear's gradients."""
    q, k = inputs(torch.float32)
    results = []
    for autocast in (True, False):
        torch.manual_seed(0)
        lin = torch.nn.Linear(D, D)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            x, y = lin(q), lin(k)
            assert x.dtype == (torch.bfloat16 if autocast else torch.float32)
            plain = infonce_xp.info_nce(x, y)
            loss = infonce_xp.sigmoid_loss(
                x, y, labels=torch.asarray(LABELS), chunk_size=chunk_size
            )
        loss.backward()
        results.append((loss.detach(), lin.weight.grad, plain.dtype))
    (ours, grad, plain_dtype), (eager, eager_grad, _) = results
    assert ours.dtype == plain_dtype, (ours.dtype, plain_dtype)
    assert bool(ours.isfinite()) and bool(grad.isfinite().all())
    torch.testing.assert_close(ours.float(), eager, rtol=3e-2, atol=1e-2)
    torch.testing.assert_close(grad, eager_grad, rtol=5e-2, atol=5e-2 * eager_grad.abs().max())
