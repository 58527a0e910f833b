"""The recipes under the transforms: ``jax.jit`` / ``jax.vmap`` / ``jax.grad``, ``torch.compile``,
``torch.func``, a learned temperature, ``normalize=False``, and inputs left untouched.

Each is held to the eager call, to ``info_nce_value_and_grad`` on NumPy, or to the float64
reference of ``reference_recipes.py`` (finite differences for the temperature).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import infonce_xp
from reference import finite_difference
from reference_recipes import recipe_loss, supervised_loss

N, M, D, T = 6, 4, 5, 0.3
EXACT = {"rtol": 1e-12, "atol": 1e-12}
F64 = {"rtol": 1e-10, "atol": 1e-10}
POSITIVES = ("own", "supcon", "pairs")
# name: (negatives?, options); labels always, negative_labels where the negatives are labelled
CASES = {
    "in-batch": (False, {}),
    "nt-xent": (False, {"symmetric": True, "same_view_negatives": True}),
    "labelled-negatives": (True, {"in_batch_negatives": True, "same_view_negatives": True}),
    "everything": (
        True,
        {"in_batch_negatives": True, "same_view_negatives": True, "symmetric": True},
    ),
}
LABELS = np.array([0, 1, 0, 2, 1, 0])  # duplicates, class 2 alone


def problem(case: str, seed: int = 0, scale: float = 1.0):
    """(q, k, negatives or None), options with labels (NumPy), for one case."""
    rng = np.random.default_rng(seed)
    q = scale * rng.normal(size=(N, D))
    k = q + scale * rng.normal(size=(N, D))
    has_negatives, options = CASES[case]
    options = {**options, "labels": rng.permutation(LABELS)}
    neg = None
    if has_negatives:
        neg = scale * rng.normal(size=(M, D))
        options["negative_labels"] = rng.integers(0, 3, size=M)
    return (q, k, neg), options


# JAX: jit, vmap, grad ----------------------------------------------------------------------


@pytest.fixture
def jnp() -> Any:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax.numpy


@pytest.mark.backends("jax")
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("positives", POSITIVES)
def test_jax_jit_vmap_grad(jnp, positives, chunk_size):
    """jit == eager; vmap over 2 problems == each alone; grad through jit (inputs and
    temperature) == ``info_nce_value_and_grad`` on NumPy. One case holds every block: keys,
    same-view queries, labelled negatives, both directions."""
    import jax

    problems = [problem("everything", seed=s) for s in range(2)]
    names = ["labels"] + (["negative_labels"] if "negative_labels" in problems[0][1] else [])
    plain = {n: v for n, v in problems[0][1].items() if n not in names}
    plain |= {"positives": positives, "chunk_size": chunk_size}
    has_neg = problems[0][0][2] is not None

    def loss(q, k, neg, t, labels, negative_labels=None, reduction="mean"):
        extra = {} if negative_labels is None else {"negative_labels": negative_labels}
        return infonce_xp.info_nce(
            q, k, neg, temperature=t, reduction=reduction, labels=labels, **extra, **plain
        )

    def rows_and_grads(q, k, neg, t, *labels):
        rows = loss(q, k, neg, t, *labels, reduction="none")
        value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3) if has_neg else (0, 1, 3))(
            q, k, neg, t, *labels
        )
        return rows, value, grads

    t = jnp.asarray(T)
    jitted = jax.jit(rows_and_grads)
    alone = []
    for i, ((q, k, neg), options) in enumerate(problems):
        inputs = [None if a is None else jnp.asarray(a) for a in (q, k, neg)]
        labels = [jnp.asarray(options[n]) for n in names]
        rows, value, grads = outs = jitted(*inputs, t, *labels)
        alone.append(outs)
        if i == 0:  # eager JAX runs op by op: once is enough
            eager = loss(*inputs, t, *labels, reduction="none")
            np.testing.assert_allclose(np.asarray(rows), np.asarray(eager), **EXACT)
        want, want_grads = infonce_xp.info_nce_value_and_grad(
            q, k, neg, temperature=np.asarray(T), **{n: options[n] for n in names}, **plain
        )
        np.testing.assert_allclose(float(value), want, **F64)
        wanted = [want_grads.query, want_grads.positive_key]
        wanted += [want_grads.negative_keys] if has_neg else []
        for got, expected in zip(grads, [*wanted, want_grads.temperature]):
            np.testing.assert_allclose(np.asarray(got), expected, **F64)
    stacked = [
        None if problems[0][0][i] is None else jnp.asarray(np.stack([p[0][i] for p in problems]))
        for i in range(3)
    ]
    stacked_labels = [jnp.asarray(np.stack([p[1][n] for p in problems])) for n in names]
    in_axes = (0, 0, 0 if has_neg else None, None, *(0 for _ in names))
    batched = jax.jit(jax.vmap(rows_and_grads, in_axes=in_axes))(*stacked, t, *stacked_labels)
    for i, (rows, value, grads) in enumerate(alone):
        np.testing.assert_allclose(np.asarray(batched[0][i]), np.asarray(rows), **EXACT)
        np.testing.assert_allclose(np.asarray(batched[1][i]), float(value), **EXACT)
        for a, b in zip(batched[2], grads):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), **EXACT)


@pytest.mark.backends("jax")
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("positives", ["supcon", "pairs"])
def test_jax_supervised_jit_vmap(jnp, positives, chunk_size):
    import jax

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8, D))
    y = np.stack([rng.permutation([0, 1, 0, 2, 1, 0, 3, 2]) for _ in range(3)])

    def loss(x, y, reduction="mean"):
        return infonce_xp.supervised_info_nce(
            x, y, T, reduction=reduction, positives=positives, chunk_size=chunk_size
        )

    def rows_and_grad(x, y):
        return loss(x, y, "none"), jax.grad(loss)(x, y)

    batched = jax.jit(jax.vmap(rows_and_grad))(jnp.asarray(x), jnp.asarray(y))
    for i in range(3):
        rows, grad = jax.jit(rows_and_grad)(jnp.asarray(x[i]), jnp.asarray(y[i]))
        eager = loss(jnp.asarray(x[i]), jnp.asarray(y[i]), "none")
        np.testing.assert_allclose(np.asarray(rows), np.asarray(eager), **EXACT)
        np.testing.assert_allclose(
            np.asarray(rows), supervised_loss(x[i], y[i], T, positives, "none"), **F64
        )
        np.testing.assert_allclose(np.asarray(batched[0][i]), np.asarray(rows), **EXACT)
        np.testing.assert_allclose(np.asarray(batched[1][i]), np.asarray(grad), **EXACT)


# torch: compile, func ----------------------------------------------------------------------


def _torch_labels(options: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {n: torch.asarray(v) for n, v in options.items() if n.endswith("labels")}


@pytest.mark.backends("torch")
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_torch_compile_fullgraph_with_labels(chunk_size):
    import torch

    import infonce_xp.torch as it

    (q, k, _), options = problem("in-batch", seed=2)
    module = it.InfoNCE(T, positives="supcon", same_view_negatives=True, chunk_size=chunk_size)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (module, compiled):
        leaves = [torch.tensor(a, requires_grad=True) for a in (q, k)]
        loss = fn(*leaves, labels=torch.asarray(options["labels"]))
        loss.backward()
        results.append((loss.detach(), [leaf.grad for leaf in leaves]))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, **EXACT)
    np.testing.assert_allclose(
        got.item(),
        recipe_loss(
            q,
            k,
            temperature=T,
            positives="supcon",
            same_view_negatives=True,
            labels=options["labels"],
        ),
        **F64,
    )
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, **EXACT)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("positives", POSITIVES)
def test_torch_func_grad_and_vmap(positives):
    import torch
    from torch import func

    problems = [problem("labelled-negatives", seed=s) for s in range(3)]
    plain = {n: v for n, v in problems[0][1].items() if not n.endswith("labels")}
    plain["positives"] = positives

    def loss(q, k, neg, labels, negative_labels, reduction="mean"):
        return infonce_xp.info_nce(
            q,
            k,
            neg,
            temperature=T,
            reduction=reduction,
            labels=labels,
            negative_labels=negative_labels,
            **plain,
        )

    def tensors(i):
        (q, k, neg), options = problems[i]
        labels = _torch_labels(options)
        return [torch.tensor(a) for a in (q, k, neg)], labels["labels"], labels["negative_labels"]

    stacked = [torch.stack(parts) for parts in zip(*[tensors(i)[0] for i in range(3)])]
    stacked_labels = [torch.stack([tensors(i)[j] for i in range(3)]) for j in (1, 2)]
    rows = func.vmap(lambda *a: loss(*a, reduction="none"))(*stacked, *stacked_labels)
    grads = func.vmap(func.grad(loss, argnums=(0, 1, 2)))(*stacked, *stacked_labels)
    for i in range(3):
        arrays, labels, negative_labels = tensors(i)
        leaves = [a.clone().requires_grad_() for a in arrays]
        autograd_loss = loss(*leaves, labels, negative_labels)
        want = torch.autograd.grad(autograd_loss, leaves)
        one = func.grad(loss, argnums=(0, 1, 2))(*arrays, labels, negative_labels)
        eager_rows = loss(*arrays, labels, negative_labels, reduction="none")
        torch.testing.assert_close(rows[i], eager_rows, **EXACT)
        for a, b, c in zip(one, want, grads):
            torch.testing.assert_close(a, b, **EXACT)
            torch.testing.assert_close(c[i], b, **EXACT)


# A learned temperature --------------------------------------------------------------------


@pytest.mark.backends("torch")
@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("case", list(CASES))
def test_learned_temperature_gradient(case, positives):
    import torch

    import infonce_xp.torch as it

    (q, k, neg), options = problem(case, seed=3)
    constructor = {n: v for n, v in options.items() if not n.endswith("labels")}
    module = it.InfoNCE(T, learn_temperature=True, positives=positives, **constructor).double()
    inputs = [None if a is None else torch.tensor(a) for a in (q, k, neg)]
    loss = module(*inputs, **_torch_labels(options))
    loss.backward()
    s = module.log_inverse_temperature.item()

    def reference(s):
        return float(
            recipe_loss(q, k, neg, temperature=math.exp(-s), positives=positives, **options)
        )

    np.testing.assert_allclose(loss.item(), reference(s), **F64)
    np.testing.assert_allclose(
        module.log_inverse_temperature.grad.item(),
        finite_difference(reference, s),
        rtol=1e-6,
        atol=1e-8,
    )


@pytest.mark.backends("torch")
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("positives", ["supcon", "pairs"])
def test_supervised_learned_temperature_gradient(positives, chunk_size):
    import torch

    import infonce_xp.torch as it

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(8, D)), np.array([0, 1, 0, 2, 1, 0, 3, 2])
    module = it.SupervisedInfoNCE(
        T, learn_temperature=True, positives=positives, chunk_size=chunk_size
    ).double()
    loss = module(torch.tensor(x), torch.asarray(y))
    loss.backward()
    s = module.log_inverse_temperature.item()

    def reference(s):
        return float(supervised_loss(x, y, math.exp(-s), positives))

    np.testing.assert_allclose(loss.item(), reference(s), **F64)
    np.testing.assert_allclose(
        module.log_inverse_temperature.grad.item(),
        finite_difference(reference, s),
        rtol=1e-6,
        atol=1e-8,
    )


# normalize=False ---------------------------------------------------------------------------


@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("case", ["in-batch", "everything"])
def test_unnormalized_with_labels(backend, case, positives):
    arrays, options = problem(case, seed=5, scale=0.4)
    options |= {"positives": positives, "temperature": T, "normalize": False}
    data = {n: backend.asarray(v) if n.endswith("labels") else v for n, v in options.items()}
    inputs = backend.asarrays(*arrays)
    for chunk_size in (None, 3):
        got = infonce_xp.info_nce(*inputs, reduction="none", chunk_size=chunk_size, **data)
        expected = recipe_loss(*arrays, reduction="none", **options)
        backend.assert_close(got, expected, **F64, err_msg=f"chunk_size={chunk_size}")
    assert not np.allclose(
        expected, recipe_loss(*arrays, reduction="none", **options | {"normalize": True})
    )
    if positives != "own":
        x, y = backend.asarray(arrays[0]), backend.asarray(options["labels"])
        got = infonce_xp.supervised_info_nce(x, y, T, "none", positives=positives, normalize=False)
        want = supervised_loss(arrays[0], options["labels"], T, positives, "none", normalize=False)
        backend.assert_close(got, want, **F64)


# Inputs are left as they were -------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_numpy_inputs_untouched(chunk_size):
    (q, k, neg), options = problem("labelled-negatives", seed=6)
    arrays = {"q": q, "k": k, "neg": neg, **{n: options[n] for n in ("labels", "negative_labels")}}
    before = {n: a.copy() for n, a in arrays.items()}
    plain = {n: v for n, v in options.items() if not n.endswith("labels")}
    for positives in POSITIVES:
        infonce_xp.info_nce_value_and_grad(
            q, k, neg, labels=options["labels"], negative_labels=options["negative_labels"],
            positives=positives, symmetric=True, chunk_size=chunk_size, normalize=False, **plain,
        )  # fmt: skip
        infonce_xp.info_nce(q, k, neg, labels=options["labels"], positives=positives, **plain)
    for positives in ("supcon", "pairs"):
        infonce_xp.supervised_info_nce(
            q, options["labels"], positives=positives, chunk_size=chunk_size
        )
    for n, a in arrays.items():
        np.testing.assert_array_equal(a, before[n], err_msg=n)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_torch_inputs_untouched(chunk_size):
    import torch

    import infonce_xp.torch as it

    (q, k, neg), options = problem("labelled-negatives", seed=7)
    plain = {n: v for n, v in options.items() if not n.endswith("labels")}
    tensors = {"q": q, "k": k, "neg": neg}
    tensors = {n: torch.tensor(a, requires_grad=True) for n, a in tensors.items()}
    tensors |= _torch_labels(options)
    before = {n: (t.detach().clone(), t._version) for n, t in tensors.items()}
    args = [tensors[n] for n in ("q", "k", "neg")]
    labels = {n: tensors[n] for n in ("labels", "negative_labels")}
    for positives in POSITIVES:
        for normalize in (True, False):
            loss_fn = it.InfoNCE(
                T, positives=positives, normalize=normalize, chunk_size=chunk_size, **plain
            )
            loss_fn(*args, **labels).backward()
    for positives in ("supcon", "pairs"):
        loss_fn = it.SupervisedInfoNCE(T, positives=positives, chunk_size=chunk_size)
        loss_fn(tensors["q"], tensors["labels"]).backward()
    for n, t in tensors.items():
        torch.testing.assert_close(t.detach(), before[n][0], rtol=0, atol=0, msg=n)
        assert t._version == before[n][1], f"{n} was written in place"
