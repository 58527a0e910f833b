"""Issue 21, compiled speed: under ``torch.compile`` a loss is one opaque call of Dynamo's graph
(``torch._dynamo.nonstrict_trace``, pinned here), so Dynamo neither traces nor guards the checks
and the plan. Each compared with eager autograd and with the traced form it replaces."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import infonce_xp.torch as it  # noqa: E402
from infonce_xp import InfoNCE as PlainInfoNCE  # noqa: E402
from infonce_xp import (  # noqa: E402
    _call,
    _torch_compiled,
    info_nce,
    sigmoid_loss,
    supervised_info_nce,
)

pytestmark = pytest.mark.backends("torch")


def data(n=6, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(2)]


class Graphs:
    """A torch.compile backend that keeps Dynamo's graphs and runs them as they are."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward


def step_and_grads(fn, q, k):
    q, k = (x.detach().requires_grad_() for x in (q, k))
    loss = fn(q, k)
    loss.backward()
    return loss.detach(), q.grad, k.grad


CASES = {
    "function": lambda q, k: info_nce(q, k, reduction="sum", label_smoothing=0.1),
    "module": it.InfoNCE(0.2, learn_temperature=True, chunk_size=4),
    "plain class": PlainInfoNCE(0.3, symmetric=True),
    "supervised": lambda q, k: supervised_info_nce(q, torch.arange(6) % 3),
    "sigmoid": lambda q, k: sigmoid_loss(q, k, 0.5, -2.0),
    "sigmoid module": it.SigmoidLoss(learn_bias=True),
}


def test_the_private_nonstrict_trace_is_there():
    # the torch we test with has it; without it every call is traced (slower, same numbers)
    assert _torch_compiled._OPAQUE is not None


@pytest.fixture
def dynamo_saw_the_checks(monkeypatch):
    """Whether Dynamo traced a call's checks (each read of a global a guard at every call)."""
    seen = []
    check = _call._check_call

    def spy(*args, **kwargs):
        seen.append(torch.compiler.is_dynamo_compiling())
        return check(*args, **kwargs)

    monkeypatch.setattr(_call, "_check_call", spy)
    monkeypatch.setattr(_call, "_CHECKED", {})
    return lambda: any(seen)


@pytest.mark.parametrize("case", CASES)
def test_dynamo_leaves_the_checks_to_aot_with_eagers_numbers(case, dynamo_saw_the_checks):
    fn = CASES[case]
    q, k = data()
    graphs = Graphs()
    compiled = torch.compile(lambda q, k: fn(q, k), backend=graphs, fullgraph=True)
    want = step_and_grads(fn, q, k)
    for _ in range(2):
        got = step_and_grads(compiled, q, k)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert len(graphs.graphs) == 1  # no recompile at the second call
    assert not dynamo_saw_the_checks()


def test_the_traced_form_it_replaces_gives_the_same_numbers(monkeypatch, dynamo_saw_the_checks):
    monkeypatch.setattr(_torch_compiled, "_OPAQUE", None)
    q, k = data()
    fn = CASES["function"]
    compiled = torch.compile(lambda q, k: fn(q, k), fullgraph=True)
    for a, b in zip(step_and_grads(compiled, q, k), step_and_grads(fn, q, k)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert dynamo_saw_the_checks()  # the spy sees what it is meant to see


def test_a_modules_changed_option_is_compiled_again():
    q, k = data()
    module = it.InfoNCE(0.2)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k), module(q, k))
    module.reduction = "sum"
    module.label_smoothing = 0.2
    torch.testing.assert_close(compiled(q, k), module(q, k))
    assert compiled(q, k).item() == pytest.approx(module(q, k).item(), rel=1e-12)
    assert module(q, k).item() > 2 * it.InfoNCE(0.2)(q, k).item()  # "sum" of 6 rows


def test_options_that_dynamo_makes_symbolic_are_read_as_numbers():
    # a second module with another float option: Dynamo passes a SymFloat the second time
    q, k = data()
    for smoothing in (0.1, 0.2, 0.3, 0.1):
        module = it.InfoNCE(0.2, label_smoothing=smoothing)
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(q, k), module(q, k), rtol=1e-12, atol=0)


def test_arguments_that_cannot_cross_are_traced_as_before():
    q, k = data()
    xp = __import__("array_api_compat").array_namespace(q)
    compiled = torch.compile(lambda q, k: info_nce(q, k, xp=xp), fullgraph=True)
    torch.testing.assert_close(compiled(q, k), info_nce(q, k), rtol=1e-12, atol=0)
    parameter = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    module = it.InfoNCE(parameter)  # an array in the options: traced
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k), module(q, k), rtol=1e-12, atol=0)


@pytest.mark.parametrize("fullgraph", [True, False])
def test_a_refused_call_still_names_its_argument(fullgraph):
    q, _ = data()
    k = torch.randn(5, 5, dtype=torch.float64)
    compiled = torch.compile(lambda q, k: info_nce(q, k), fullgraph=fullgraph)
    message = "query and positive_key must have the same number of rows; got 6 and 5"
    if fullgraph:  # Dynamo reports the exception it saw
        with pytest.raises(Exception, match=message):
            compiled(q, k)
    else:  # Dynamo runs the frame eagerly, which raises it
        with pytest.raises(ValueError, match=message):
            compiled(q, k)
