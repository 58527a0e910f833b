"""The plan of a call: chosen once from static facts, equal by value, holding no array; its
residual layout round-trips; the torch bridge's fast entry has a public fallback."""

from __future__ import annotations

import numpy as np
import pytest

from infonce_xp import Options, _call, _engine, info_nce_value_and_grad

RNG = np.random.default_rng(0)
Q, K = RNG.standard_normal((2, 6, 4))
NEG = RNG.standard_normal((5, 4))
PAIRED = RNG.standard_normal((6, 3, 4))
LABELS = np.array([0, 1, 0, 2, 1, 0])


def plan_of(negatives=None, labels=None, **options):
    opts = Options.of(
        0.1, options.pop("reduction", "mean"), options.pop("mode", "unpaired"), options
    )
    call = _call.check_call(opts, query=Q, positive_key=K, negative_keys=negatives, labels=labels)
    return call.plan


@pytest.mark.parametrize(
    ("case", "kernels"),
    [
        (dict(), ["plain"]),
        (dict(negatives=NEG), ["plain"]),
        (dict(negatives=NEG, in_batch_negatives=True), ["cells"]),  # two blocks
        (dict(negatives=PAIRED, mode="paired", in_batch_negatives=False), ["plain"]),
        (dict(chunk_size=2), ["tiled"]),
        (dict(negatives=NEG[:0], in_batch_negatives=False, chunk_size=2), ["plain"]),
        (dict(labels=LABELS), ["cells"]),
        (dict(symmetric=True), ["plain", "plain"]),
        (dict(symmetric=True, negatives=NEG, in_batch_negatives=True), ["cells", "plain"]),
        (dict(symmetric=True, labels=LABELS, chunk_size=4), ["tiled", "tiled"]),
    ],
)
def test_each_direction_gets_its_execution_once(case, kernels):
    plan = plan_of(**case)
    assert [route.kernel for route in plan.routes] == kernels
    assert repr(plan).startswith("Plan(")


def test_plans_compare_by_value_and_hold_no_array():
    a, b = plan_of(symmetric=True), plan_of(symmetric=True)
    assert a == b and hash(a) == hash(b)
    assert a != plan_of(symmetric=True, reduction="sum")
    assert a != plan_of()

    def walk(x):
        assert not hasattr(x, "__array_namespace__") and not isinstance(x, np.ndarray), x
        if isinstance(x, (tuple, list)):
            for item in x:
                walk(item)

    for name in _engine.Plan.__slots__:
        walk(getattr(a, name))


@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(negatives=NEG, symmetric=True, in_batch_negatives=True),
        dict(negatives=PAIRED, mode="paired", in_batch_negatives=False),
        dict(labels=LABELS, positives="pairs", chunk_size=4),
        dict(labels=LABELS, positives="supcon", same_view_negatives=True),
        dict(normalize=False, chunk_size=4),
    ],
)
@pytest.mark.parametrize("split", [False, True])
def test_the_residuals_round_trip_through_their_flat_layout(case, split):
    """What a bridge keeps as a flat list gives back the same gradients."""
    plan = plan_of(**case)
    arrays = {"query": Q, "positive_key": K}
    negatives, labels = case.get("negatives"), case.get("labels")
    if negatives is not None:
        arrays["negative_keys"] = negatives
    if labels is not None:
        arrays["labels"] = labels
    xp = _call.array_namespace(Q)
    loss, residuals = plan.forward(xp, arrays, 0.1)
    leaves = plan.save(residuals, split)
    loaded = plan.load(arrays, leaves, split)
    want = plan.backward(xp, residuals, None, 0.1)
    got = plan.backward(xp, loaded, None, 0.1)
    assert (
        want.keys()
        == got.keys()
        == {"query", "positive_key"} | ({"negative_keys"} if negatives is not None else set())
    )
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    ref, grads = info_nce_value_and_grad(
        Q,
        K,
        negatives,
        negative_mode=case.get("mode", "unpaired"),
        labels=labels,
        **{k: v for k, v in case.items() if k not in ("negatives", "labels", "mode")},
    )
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(got["query"], grads.query, rtol=1e-12)


@pytest.mark.backends("torch")
def test_the_torch_bridge_has_its_fast_entry_and_a_public_fallback():
    """The fast entry uses private torch pieces (Function's C ``apply``,
    ``unwrap_dead_wrappers``): this torch has them, and the fallback (``Function.apply``)
    gives the same loss and gradients."""
    import torch

    from infonce_xp import _torch_autograd, info_nce

    assert _torch_autograd.APPLY is not _torch_autograd._apply
    q, k = (torch.tensor(x, requires_grad=True) for x in (Q, K))
    results = []
    fast = _torch_autograd.APPLY
    try:
        for apply in (fast, _torch_autograd._apply):
            _torch_autograd.APPLY = apply
            loss = info_nce(q, k, symmetric=True)
            results.append((loss.detach(), *torch.autograd.grad(loss, (q, k))))
    finally:
        _torch_autograd.APPLY = fast
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("symmetric", [False, True])
def test_the_compiled_form_gives_eagers_numbers_for_a_second_worker(symmetric):
    """Compiled, the in-batch kernel hides the positives with a mask and sends their gradient
    through the positive itself (``fused``): here for the second of two workers (row offset
    N), where the positives are not on the main diagonal of the logits."""
    import torch

    from infonce_xp import info_nce

    other = torch.tensor(RNG.standard_normal((6, 4)))

    class SecondWorker:
        """Two workers' rows stacked, this one's second (a gradient flows to its own)."""

        def __call__(self, x):
            return torch.cat([other.to(x.dtype), x])

        def rank(self):
            return 1

    gather = SecondWorker()

    def loss(q, k):
        return info_nce(q, k, gather=gather, symmetric=symmetric)

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, dynamic=False)
    results = []
    for f in (loss, compiled):
        q, k = (torch.tensor(x, requires_grad=True) for x in (Q, K))
        value = f(q, k)
        value.backward()
        results.append((value.detach(), q.grad, k.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.backends("torch")
def test_a_plan_made_while_torch_compiles_takes_the_fused_kernel(monkeypatch):
    import torch

    q, k = torch.tensor(Q), torch.tensor(K)
    opts = Options.of(0.1, "mean", "unpaired", {"symmetric": True})
    eager = _call.check_call(opts, query=q, positive_key=k).plan
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    compiling = _call.check_call(opts, query=q, positive_key=k).plan
    assert [r.kernel for r in eager.routes] == ["plain", "plain"]
    assert [r.kernel for r in compiling.routes] == ["fused", "fused"]
    assert eager != compiling


@pytest.mark.backends("torch")
def test_the_torch_func_question_is_the_private_one_here():
    """``in_torch_func`` asks torch's private ``_are_functorch_transforms_active`` (with a
    conservative fallback): this torch has it, and it answers inside ``torch.func.vmap``."""
    import torch

    from infonce_xp._namespaces import in_torch_func

    assert hasattr(torch._C, "_are_functorch_transforms_active")
    assert not in_torch_func()
    seen = []

    def probe(x):
        seen.append(in_torch_func())
        return x

    torch.func.vmap(probe)(torch.ones(2))
    assert seen == [True]


@pytest.mark.backends("torch")
def test_torchs_questions_of_the_moment_are_asked_when_they_are_used(monkeypatch):
    """The ``Traits`` callables of torch are bound once (``_namespaces.torch_now``) but answer
    for the moment they are called: a tensor on the tape, inside ``torch.func.vmap``, while
    torch compiles."""
    import torch

    from infonce_xp._arrays import array_namespace, traits

    found = traits(array_namespace(torch.ones(1)))
    assert found.overwrite(torch.ones(2))
    assert not found.overwrite(torch.ones(2, requires_grad=True))
    assert not found.watched() and not found.fusing()
    assert found.diagonal_read() and found.diagonal_view()
    seen = []

    def probe(x):
        seen.append((found.overwrite(torch.ones(2)), found.watched()))
        return x

    torch.func.vmap(probe)(torch.ones(2))
    assert seen == [(False, True)]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert found.fusing() and not found.watched()
    assert not found.diagonal_read() and not found.diagonal_view()


def test_what_the_shapes_decide_is_found_once_per_plan(monkeypatch):
    """The normalisation's layout (which inputs share a stack) is fixed when the plan is made,
    not found at each call; other shapes or dtypes make another plan, never a stale one."""
    from infonce_xp import _stacks

    plan = plan_of(negatives=NEG)
    arrays = {"query": Q, "positive_key": K, "negative_keys": NEG}
    xp = _call.array_namespace(Q)
    want_loss, want = info_nce_value_and_grad(Q, K, NEG)
    monkeypatch.setattr(_stacks, "layout", lambda *args: pytest.fail("layout found per call"))
    loss, residuals = plan.forward(xp, arrays, 0.1)
    grads = plan.backward(xp, residuals, None, 0.1)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grads["query"], want.query, rtol=1e-12)
    monkeypatch.undo()
    assert plan_of(negatives=NEG[:3]) != plan  # fewer negatives: another stack
    opts = Options.of(0.1, "mean", "unpaired", {})
    single = _call.check_call(opts, *(x.astype(np.float32) for x in (Q, K, NEG))).plan
    assert single != plan and single.dtype == np.float32
