"""What trainers take for granted on torch: double backward, autocast, torch.func, dynamic
compile, half-precision overflow. Each against the seed or plain autograd of a reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
seed_module = pytest.importorskip("info_nce")
pytestmark = pytest.mark.backends("torch")

import infonce_xp  # noqa: E402
from infonce_xp import info_nce  # noqa: E402
from infonce_xp.torch import InfoNCE  # noqa: E402

MODES = {
    "in-batch": dict(),
    "unpaired": dict(neg=(7, 5)),
    "paired": dict(neg=(6, 3, 5), negative_mode="paired"),
    "symmetric": dict(symmetric=True),
}


def seed_loss(q, k, neg=None, temperature=0.1, negative_mode="unpaired", symmetric=False, **_):
    """The seed, with CLIP's symmetric loss as the mean of its two directions."""
    loss = seed_module.info_nce(q, k, neg, temperature=temperature, negative_mode=negative_mode)
    if symmetric:
        loss = (loss + seed_module.info_nce(k, q, temperature=temperature)) / 2
    return loss


def problem(mode, dtype=torch.float64, seed=0):
    spec = MODES[mode]
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(6, 5, dtype=dtype, generator=gen)
    k = torch.randn(6, 5, dtype=dtype, generator=gen)
    neg = torch.randn(*spec["neg"], dtype=dtype, generator=gen) if "neg" in spec else None
    options = {n: v for n, v in spec.items() if n != "neg"}
    return q, k, neg, options


def leaves(*xs):
    return [None if x is None else x.detach().clone().requires_grad_() for x in xs]


def second_order(loss_fn, q, k, neg, t):
    """q, k and t's gradient of ``loss + |d loss / d q|^2``: needs the backward's own graph."""
    q, k, neg, t = leaves(q, k, neg, t)
    loss = loss_fn(q, k, neg, t)
    (g,) = torch.autograd.grad(loss, q, create_graph=True)
    total = loss + (g**2).sum()
    return torch.autograd.grad(total, [x for x in (q, k, neg, t) if x is not None])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_double_backward_matches_the_seed(mode, chunk_size):
    q, k, neg, options = problem(mode)
    t = torch.tensor(0.3, dtype=torch.float64)

    def ours(q, k, neg, t):
        return info_nce(q, k, neg, temperature=t, chunk_size=chunk_size, **options)

    def seeds(q, k, neg, t):
        return seed_loss(q, k, neg, temperature=t, **options)

    for got, want in zip(second_order(ours, q, k, neg, t), second_order(seeds, q, k, neg, t)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_gradgradcheck(mode, chunk_size):
    q, k, neg, options = problem(mode)
    t = torch.tensor(0.3, dtype=torch.float64)
    inputs = [x for x in leaves(q, k, neg, t) if x is not None]

    def f(*xs):
        q, k, *rest = xs
        neg = rest[0] if len(rest) == 2 else None
        return info_nce(q, k, neg, temperature=rest[-1], chunk_size=chunk_size, **options)

    assert torch.autograd.gradgradcheck(f, inputs)


def test_double_backward_through_the_learned_temperature_module():
    q, k, _, _ = problem("in-batch")
    loss_fn = InfoNCE(temperature=0.2, learn_temperature=True).double()
    q = q.requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(q, k), q, create_graph=True)
    (dt,) = torch.autograd.grad((g**2).sum(), loss_fn.log_inverse_temperature)
    t = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    (g_seed,) = torch.autograd.grad(seed_loss(q, k, temperature=t), q, create_graph=True)
    (dt_seed,) = torch.autograd.grad((g_seed**2).sum(), t)
    # log_inverse_temperature = -log t, so d/d(log s) = -t d/dt
    torch.testing.assert_close(dt, -0.2 * dt_seed, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_autocast_matches_the_seed(device, mode, chunk_size):
    """The standard AMP pattern: forward under autocast, backward outside it."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA autocast needs a CUDA device")
    q, k, neg, options = (
        x.to(device) if isinstance(x, torch.Tensor) else x for x in problem(mode, torch.float32)
    )
    results = []
    for loss_fn in (info_nce, seed_loss):
        torch.manual_seed(0)
        lin = torch.nn.Linear(5, 5).to(device)
        with torch.autocast(device, dtype=torch.bfloat16):
            kwargs = dict(options, chunk_size=chunk_size) if loss_fn is info_nce else options
            loss = loss_fn(lin(q), k, neg, **kwargs)
        loss.backward()
        results.append((loss.float(), lin.weight.grad))
    (ours, our_grad), (theirs, their_grad) = results
    # bfloat16 matmuls in the linear layer (and, for the seed, in the logits): 8 bits.
    torch.testing.assert_close(ours, theirs, rtol=3e-2, atol=1e-2)
    torch.testing.assert_close(our_grad, their_grad, rtol=5e-2, atol=2e-2)


def test_torch_func_grad_vmap_jacrev():
    func = torch.func
    gen = torch.Generator().manual_seed(1)
    qs, ks = torch.randn(3, 6, 5, generator=gen), torch.randn(3, 6, 5, generator=gen)
    # grad: equals plain autograd
    got = func.grad(lambda q: info_nce(q, ks[0]))(qs[0])
    q = qs[0].clone().requires_grad_()
    info_nce(q, ks[0]).backward()
    torch.testing.assert_close(got, q.grad)
    # vmap over a leading batch of problems: equals the seed under vmap, and a loop
    got = func.vmap(info_nce)(qs, ks)
    torch.testing.assert_close(got, func.vmap(seed_module.info_nce)(qs, ks))
    torch.testing.assert_close(got, torch.stack([info_nce(a, b) for a, b in zip(qs, ks)]))
    # jacrev of the per-row losses: equals the seed's
    got = func.jacrev(lambda q: info_nce(q, ks[0], reduction="none"))(qs[0])
    want = func.jacrev(lambda q: seed_module.info_nce(q, ks[0], reduction="none"))(qs[0])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # vmap of grad, with negatives
    negs = torch.randn(3, 4, 5, generator=gen)
    got = func.vmap(func.grad(lambda q, k, n: info_nce(q, k, n)))(qs, ks, negs)
    want = func.vmap(func.grad(lambda q, k, n: seed_module.info_nce(q, k, n)))(qs, ks, negs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_dynamic_compile_matches_eager_and_warns_nothing():
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda q, k: info_nce(q, k, temperature=0.07), fullgraph=True, dynamic=True
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (5, 7, 11):
            gen = torch.Generator().manual_seed(n)
            q = torch.randn(n, 4, generator=gen, requires_grad=True)
            k = torch.randn(n, 4, generator=gen)
            loss = compiled(q, k)
            loss.backward()
            q_eager = q.detach().clone().requires_grad_()
            want = info_nce(q_eager, k, temperature=0.07)
            want.backward()
            torch.testing.assert_close(loss, want)
            torch.testing.assert_close(q.grad, q_eager.grad)
    ours = [w for w in caught if "infonce_xp" in w.filename or "array_api_compat" in w.filename]
    ours += [w for w in caught if "lru_cache" in str(w.message)]
    assert not ours, [str(w.message) for w in ours]


def test_float16_overflow_is_inf_as_in_float64():
    """Gradients beyond float16's range come back as inf (loss scalers see them), the rest as
    the float64 computation on the same values."""
    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(16, 32, generator=gen) * 1e-6).half()
    k = torch.randn(16, 32, generator=gen).half()
    exact = q.double().requires_grad_()
    info_nce(exact, k.double(), temperature=0.01).backward()
    half = q.clone().requires_grad_()
    info_nce(half, k, temperature=0.01).backward()
    over = exact.grad.abs() > torch.finfo(torch.float16).max
    assert over.any() and (~over).any()
    assert torch.isinf(half.grad[over]).all()
    assert torch.equal(torch.sign(half.grad[over]).double(), torch.sign(exact.grad[over]))
    assert not (half.grad[~over].abs() == torch.finfo(torch.float16).max).any()
    np.testing.assert_allclose(
        half.grad[~over].double(), exact.grad[~over], rtol=2e-2, atol=1e-3 * 65504
    )


def test_learn_temperature_must_be_a_bool():
    with pytest.raises(TypeError, match=r"learn_temperature.*'no'"):
        InfoNCE(learn_temperature="no")


def test_numpy_temperature_is_a_number_for_torch():
    q, k, _, _ = problem("in-batch", torch.float32)
    for t in (np.float32(0.1), np.asarray(0.1)):
        torch.testing.assert_close(info_nce(q, k, temperature=t), info_nce(q, k, temperature=0.1))
        torch.testing.assert_close(InfoNCE(t)(q, k), seed_module.info_nce(q, k, temperature=0.1))


def test_tensor_temperature_is_checked_at_construction_and_call():
    q, k, _, _ = problem("in-batch", torch.float32)
    for bad in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            info_nce(q, k, temperature=torch.tensor(bad))
        with pytest.raises(ValueError, match="temperature"):
            InfoNCE(temperature=torch.tensor(bad))
    # a traced temperature is not read
    compiled = torch.compile(lambda q, k, t: info_nce(q, k, temperature=t), fullgraph=True)
    t = torch.tensor(0.1)
    torch.testing.assert_close(compiled(q, k, t), info_nce(q, k, temperature=0.1))
    assert infonce_xp.Options(temperature=t).temperature is t


FROZEN = [
    (mode, frozen)
    for mode in MODES
    for frozen in ["q", "k", "neg", "k+neg", "q+neg"]
    if "neg" in MODES[mode] or "neg" not in frozen
]


@pytest.mark.parametrize(("mode", "frozen"), FROZEN)
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_gradients_of_the_inputs_that_ask_match_the_seed(mode, frozen, chunk_size):
    """Inputs without requires_grad (a frozen encoder, a MoCo queue) get no gradient, and the
    others get the seed's: the backward skips and regroups work by what autograd asks for."""
    q, k, neg, options = problem(mode)
    ours, theirs = leaves(q, k, neg), leaves(q, k, neg)
    for name, a, b in zip(("q", "k", "neg"), ours, theirs):
        if a is not None and name in frozen.split("+"):
            a.requires_grad_(False)
            b.requires_grad_(False)
    info_nce(*ours, chunk_size=chunk_size, **options).backward()
    seed_loss(*theirs, **options).backward()
    for a, b in zip(ours, theirs):
        if a is None:
            continue
        if not b.requires_grad:
            assert a.grad is None
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", list(MODES))
def test_compile_gives_eagers_gradients_for_every_input(mode):
    """torch.compile(fullgraph=True) against eager with every input requiring grad (a compiled
    backward once returned a wrong query gradient beside a right key gradient)."""
    torch._dynamo.reset()
    q, k, neg, options = problem(mode, dtype=torch.float32)
    compiled = torch.compile(lambda *xs: info_nce(*xs, **options), fullgraph=True, dynamic=False)
    ours, eager = leaves(q, k, neg), leaves(q, k, neg)
    compiled(*ours).backward()
    info_nce(*eager, **options).backward()
    for a, b in zip(ours, eager):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad)
