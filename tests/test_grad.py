"""Gradients: the analytic backward against the seed's autograd, finite differences, CLIP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infonce_xp import info_nce, info_nce_value_and_grad
from reference import finite_difference, reduce, reference_rows, seed
from test_loss import problems


def _grads(backend, q, k, neg, **kwargs):
    loss, grads = info_nce_value_and_grad(*backend.asarrays(q, k, neg), **kwargs)
    return backend.to_numpy(loss), [None if g is None else backend.to_numpy(g) for g in grads]


@given(problem=problems(max_n=32, max_d=32), dtype=st.sampled_from(["float32", "float64"]))
def test_gradients_match_seed_autograd(backend, problem, dtype):
    q, k, neg, t, mode = (a.astype(dtype) if isinstance(a, np.ndarray) else a for a in problem)
    loss, grads = _grads(backend, q, k, neg, temperature=t, negative_mode=mode)
    ref_loss, ref_grads = seed(q, k, neg, t, "mean", mode, dtype, grad=True)
    rtol, atol = (1e-6, 1e-6 / t) if dtype == "float32" else (1e-12, 1e-13 / t)
    if dtype == "float32":  # the seed's own float32 round-off is what bounds the comparison
        rtol, atol = 1e-4, 2e-6 / t
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=atol)
    for got, ref, x in zip(grads, ref_grads, (q, k, neg)):
        if ref is not None:
            # The normalisation's gradient carries a 1/|row| factor, and so does its round-off.
            row_scale = np.maximum(1.0, 1.0 / np.linalg.norm(x, axis=-1, keepdims=True))
            assert np.all(np.abs(got - ref) <= rtol * np.abs(ref) + atol * row_scale)


@pytest.mark.parametrize("mode", ["in-batch", "unpaired", "paired", "symmetric"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradients_match_finite_differences(backend, mode, normalize, reduction):
    rng = np.random.default_rng(11)
    q, k = rng.normal(size=(2, 5, 3))
    neg = {"unpaired": rng.normal(size=(4, 3)), "paired": rng.normal(size=(5, 4, 3))}.get(mode)
    go = rng.normal(size=(5,) if reduction == "none" else ())
    options = {
        "negative_mode": "paired" if mode == "paired" else "unpaired",
        "symmetric": mode == "symmetric",
        "normalize": normalize,
        "reduction": reduction,
    }

    def value(q, k, neg, t):
        rows = reference_rows(
            q, k, neg, t, options["negative_mode"], options["symmetric"], normalize
        )
        return float(np.sum(go * reduce(rows, reduction)))

    t = 0.3
    _, got = info_nce_value_and_grad(
        *backend.asarrays(q, k, neg),
        temperature=backend.asarray(np.asarray(t)),
        grad_output=backend.asarray(go),
        **options,
    )
    backend.assert_close(
        got[0], finite_difference(lambda x: value(x, k, neg, t), q), rtol=1e-6, atol=1e-8
    )
    backend.assert_close(
        got[1], finite_difference(lambda x: value(q, x, neg, t), k), rtol=1e-6, atol=1e-8
    )
    if neg is not None:
        backend.assert_close(
            got[2], finite_difference(lambda x: value(q, k, x, t), neg), rtol=1e-6, atol=1e-8
        )
    fd_t = (value(q, k, neg, t + 1e-6) - value(q, k, neg, t - 1e-6)) / 2e-6
    backend.assert_close(got[3], fd_t, rtol=1e-6)


def test_python_temperature_has_no_gradient(backend):
    rng = np.random.default_rng(0)
    _, grads = _grads(backend, *rng.normal(size=(2, 4, 3)), None)
    assert grads[2] is None and grads[3] is None


@pytest.mark.backends("torch")
def test_symmetric_is_the_clip_loss():
    import torch

    f = torch.nn.functional
    rng = np.random.default_rng(2)
    image, text = (torch.tensor(a, requires_grad=True) for a in rng.normal(size=(2, 16, 8)))
    logit_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    # open_clip's ClipLoss on normalised features
    logits = logit_scale.exp() * f.normalize(image, dim=-1) @ f.normalize(text, dim=-1).T
    labels = torch.arange(16)
    clip = (f.cross_entropy(logits, labels) + f.cross_entropy(logits.T, labels)) / 2
    clip_grads = torch.autograd.grad(clip, (image, text, logit_scale))
    ours = info_nce(image, text, temperature=1 / logit_scale.exp(), symmetric=True)
    torch.testing.assert_close(ours, clip, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (image, text, logit_scale)), clip_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_symmetric_none_is_the_per_pair_average(backend):
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=(2, 6, 4))
    rows = info_nce(*backend.asarrays(q, k), reduction="none", symmetric=True)
    expected = (reference_rows(q, k) + reference_rows(k, q)) / 2
    backend.assert_close(rows, expected, rtol=1e-12)


def test_unnormalised_logits_stay_stable(backend):
    rng = np.random.default_rng(4)
    q, k = 100 * rng.normal(size=(2, 8, 4))
    out = info_nce(*backend.asarrays(q, k), normalize=False, reduction="none")
    backend.assert_close(out, reference_rows(q, k, normalize=False), rtol=1e-10)
    assert np.all(np.isfinite(backend.to_numpy(out)))


# Torch autograd ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["in-batch", "unpaired", "paired", "symmetric"])
@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.backends("torch")
def test_torch_gradcheck(mode, chunk_size):
    import torch

    gen = torch.Generator().manual_seed(0)
    q, k = (
        torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2)
    )
    neg = {
        "unpaired": torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True),
        "paired": torch.randn(5, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True),
    }.get(mode)
    t = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    options = {
        "negative_mode": "paired" if mode == "paired" else "unpaired",
        "symmetric": mode == "symmetric",
        "chunk_size": chunk_size,
        "reduction": "none",
    }
    inputs = (q, k, t) if neg is None else (q, k, t, neg)

    def f(q, k, t, neg=None):
        return info_nce(q, k, neg, temperature=t, **options)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.backends("torch")
def test_torch_learnable_temperature_module():
    import torch

    from infonce_xp.torch import InfoNCE

    loss_fn = InfoNCE(temperature=0.07, learn_temperature=True)
    assert [name for name, _ in loss_fn.named_parameters()] == ["log_inverse_temperature"]
    assert set(loss_fn.state_dict()) == {"log_inverse_temperature"}
    torch.testing.assert_close(loss_fn.temperature, torch.tensor(0.07))
    q, k = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1))
    loss = loss_fn(q, k)
    loss.backward()
    grad = loss_fn.log_inverse_temperature.grad
    # d loss / d log(1/t) = d loss / d t * (-t)
    t = torch.tensor(0.07, requires_grad=True)
    (d_t,) = torch.autograd.grad(info_nce(q, k, temperature=t), t)
    torch.testing.assert_close(grad, -d_t * 0.07, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        loss_fn.log_inverse_temperature.fill_(10.0)  # would be t = 4.5e-5
    torch.testing.assert_close(loss_fn.temperature, torch.tensor(0.01))
    with pytest.raises(ValueError, match="learn_temperature"):
        InfoNCE(temperature=0.001, learn_temperature=True)


@pytest.mark.backends("torch")
def test_torch_module_is_a_drop_in():
    import info_nce as seed_package
    import torch

    from infonce_xp.torch import InfoNCE

    ours, theirs = InfoNCE(0.2, "sum", "paired"), seed_package.InfoNCE(0.2, "sum", "paired")
    assert repr(ours) == "InfoNCE(temperature=0.2, reduction='sum', negative_mode='paired')"
    assert ours.state_dict() == theirs.state_dict() == {}
    model = torch.nn.ModuleDict(
        {"loss": torch.nn.Sequential(torch.nn.Identity()), "info": ours}
    ).to("cpu", torch.float64)
    q, k, neg = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 5, 3)
    torch.testing.assert_close(model["info"](q, k, neg), theirs(q, k, neg))
    assert model["info"].temperature == 0.2


# Compilers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.backends("torch")
def test_torch_compile_fullgraph(chunk_size):
    import torch

    gen = torch.Generator().manual_seed(0)
    q, k, neg = (
        torch.randn(8, 4, generator=gen),
        torch.randn(8, 4, generator=gen),
        torch.randn(6, 4, generator=gen),
    )
    t = torch.tensor(0.1, requires_grad=True)

    def f(q, k, neg, t):
        return info_nce(q, k, neg, temperature=t, chunk_size=chunk_size) + info_nce(
            q, k, symmetric=True
        )

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [x.clone().requires_grad_() for x in (q, k, neg)]
    eager_leaves = [x.clone().requires_grad_() for x in (q, k, neg)]
    out, expected = compiled(*leaves, t), f(*eager_leaves, t)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out, leaves)
    for a, b in zip(grads, torch.autograd.grad(expected, eager_leaves)):
        torch.testing.assert_close(a, b)


@pytest.mark.backends("jax")
def test_jax_jit_grad_vmap():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    rng = np.random.default_rng(7)
    q, k, neg = rng.normal(size=(3, 4, 6, 5))
    t = 0.2

    def loss(q, k, neg, t):
        return info_nce(q, k, neg, temperature=t) + info_nce(
            q, k, temperature=t, symmetric=True, chunk_size=4
        )

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    for i in range(4):
        got = grad(jnp.asarray(q[i]), jnp.asarray(k[i]), jnp.asarray(neg[i]), jnp.asarray(t))
        _, g1 = info_nce_value_and_grad(q[i], k[i], neg[i], temperature=np.asarray(t))
        _, g2 = info_nce_value_and_grad(q[i], k[i], symmetric=True, temperature=np.asarray(t))
        np.testing.assert_allclose(np.asarray(got[0]), g1.query + g2.query, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(got[2]), g1.negative_keys, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(got[3]), g1.temperature + g2.temperature, rtol=1e-10)
    batched = jax.vmap(lambda q, k, neg: info_nce(q, k, neg, reduction="none"))(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(neg)
    )
    for i in range(4):
        np.testing.assert_allclose(
            np.asarray(batched[i]), reference_rows(q[i], k[i], neg[i]), rtol=1e-12
        )
    per_batch_grad = jax.vmap(jax.grad(lambda q, k: info_nce(q, k, chunk_size=4)))(
        jnp.asarray(q), jnp.asarray(k)
    )
    for i in range(4):
        _, g = info_nce_value_and_grad(q[i], k[i])
        np.testing.assert_allclose(np.asarray(per_batch_grad[i]), g.query, rtol=1e-10, atol=1e-12)
