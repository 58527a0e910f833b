"""Issue 20, items 1-4, 10 and 11: the seed's Parameter temperature, compile with it and with
"pairs", Options that survive pickle, and errors that name the argument. Each compared with the
seed or with eager autograd."""

from __future__ import annotations

import copy
import pickle
import textwrap

import numpy as np
import pytest

from _subprocess import run_python
from infonce_xp import InfoNCE as PlainInfoNCE
from infonce_xp import info_nce, supervised_info_nce
from infonce_xp._options import Options

torch = pytest.importorskip("torch")
seed_module = pytest.importorskip("info_nce")

from infonce_xp.torch import InfoNCE, SupervisedInfoNCE  # noqa: E402

nn = torch.nn


def data(n=8, d=5, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen, dtype=dtype) for _ in range(2)]


# 1. A Parameter temperature is registered, as the seed's module does.


@pytest.mark.backends("torch")
@pytest.mark.parametrize("negatives", [False, True])
def test_parameter_temperature_trains_as_the_seed(negatives):
    q, k = data()
    neg = torch.randn(6, 5, generator=torch.Generator().manual_seed(3)) if negatives else None
    ours = InfoNCE(temperature=nn.Parameter(torch.tensor(0.2)))
    seeds = seed_module.InfoNCE(temperature=nn.Parameter(torch.tensor(0.2)))
    assert [n for n, _ in ours.named_parameters()] == ["temperature"]
    assert [n for n, _ in seeds.named_parameters()] == ["temperature"]
    for module in (ours, seeds):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
        module(q, k, neg).backward()
        optimizer.step()
    assert ours.temperature.item() != 0.2  # trained
    torch.testing.assert_close(ours.temperature, seeds.temperature, rtol=1e-6, atol=0)
    # the loss follows the trained value
    torch.testing.assert_close(ours(q, k, neg), seeds(q, k, neg), rtol=1e-6, atol=1e-7)


@pytest.mark.backends("torch")
def test_parameter_temperature_moves_and_copies_with_the_module():
    q, k = data(dtype=torch.float64)
    module = InfoNCE(temperature=nn.Parameter(torch.tensor(0.3)))
    assert set(module.state_dict()) == {"temperature"}
    module.double()
    assert module.temperature.dtype == torch.float64
    assert module.options.temperature is module.temperature
    assert module(q, k).dtype == torch.float64
    module.to("cpu")
    twin = copy.deepcopy(module)
    assert twin.temperature is not module.temperature
    assert twin.options.temperature is twin.temperature
    torch.testing.assert_close(twin(q, k), module(q, k))
    with torch.no_grad():
        twin.temperature.fill_(0.5)
    assert module.temperature.item() == pytest.approx(0.3)
    torch.testing.assert_close(twin(q, k), info_nce(q, k, temperature=0.5))
    restored = pickle.loads(pickle.dumps(module))
    assert restored.options.temperature is restored.temperature
    assert [n for n, _ in restored.named_parameters()] == ["temperature"]
    # a state dict loaded by assignment replaces the Parameter: the loss uses the new one
    fresh = InfoNCE(temperature=nn.Parameter(torch.tensor(0.3, dtype=torch.float64)))
    fresh.load_state_dict({"temperature": torch.tensor(0.7, dtype=torch.float64)}, assign=True)
    torch.testing.assert_close(fresh(q, k), info_nce(q, k, temperature=0.7))


@pytest.mark.backends("torch")
def test_parameter_temperature_assigned_later_and_in_the_supervised_module():
    module = InfoNCE()
    module.temperature = nn.Parameter(torch.tensor(0.25))
    assert [n for n, _ in module.named_parameters()] == ["temperature"]
    assert "temperature=Parameter(0.25)" in repr(module)
    module.temperature = 0.1
    assert list(module.parameters()) == []
    supervised = SupervisedInfoNCE(temperature=nn.Parameter(torch.tensor(0.2)))
    assert [n for n, _ in supervised.named_parameters()] == ["temperature"]
    e = torch.randn(8, 4, requires_grad=True)
    supervised(e, torch.arange(8) % 3).backward()
    assert supervised.temperature.grad is not None


@pytest.mark.backends("torch")
def test_a_parameter_trained_below_zero_is_refused():
    q, k = data()
    module = InfoNCE(temperature=nn.Parameter(torch.tensor(0.2)))
    with torch.no_grad():
        module.temperature.fill_(-0.1)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        module(q, k)


# 2 and 4. torch.compile(fullgraph=True) with a Parameter temperature, and "pairs" with a gradient


def compiled_and_eager(fn, *inputs, parameters=()):
    """Loss and gradients (inputs', then ``parameters``') of ``fn`` compiled (fullgraph) and
    eager, on fresh leaves."""
    torch._dynamo.reset()
    out = []
    for f in (torch.compile(fn, fullgraph=True), fn):
        for p in parameters:
            p.grad = None
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        loss = f(*leaves)
        loss.backward()
        out.append([loss.detach(), *(x.grad for x in leaves), *(p.grad for p in parameters)])
    return out


@pytest.mark.backends("torch")
@pytest.mark.parametrize(
    "case", ["plain", "labelled", "tiled", "supervised", "functions", "supervised function"]
)
def test_compile_with_a_parameter_temperature(case):
    q, k = data()
    y = torch.arange(8) % 3
    t = nn.Parameter(torch.tensor(0.2))
    if case == "supervised":
        module = SupervisedInfoNCE(temperature=t)

        def fn(q, k):
            return module(torch.cat([q, k]), torch.cat([y, y]))
    elif case == "functions":

        def fn(q, k):
            return info_nce(q, k, temperature=t) + info_nce(q, k, temperature=t, labels=y)
    elif case == "supervised function":

        def fn(q, k):
            return supervised_info_nce(torch.cat([q, k]), torch.cat([y, y]), temperature=t)
    else:
        module = InfoNCE(temperature=t, symmetric=True, chunk_size=3 if case == "tiled" else None)
        labels = None if case == "plain" else y

        def fn(q, k):
            return module(q, k, labels=labels)

    got, want = compiled_and_eager(fn, q, k, parameters=[t])
    assert got[-1] is not None
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("form", ["info_nce", "supervised"])
def test_compile_pairs_with_a_gradient(chunk_size, form):
    q, k = data()
    y = torch.arange(8) % 3
    if form == "info_nce":

        def fn(q, k):
            return info_nce(q, k, labels=y, positives="pairs", chunk_size=chunk_size)
    else:

        def fn(q, k):
            embeddings, labels = torch.cat([q, k]), torch.cat([y, y])
            return supervised_info_nce(embeddings, labels, positives="pairs", chunk_size=chunk_size)

    got, want = compiled_and_eager(fn, q, k)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# 3. Options: value equality, and pickle / deepcopy keep them


@pytest.mark.parametrize("make", [lambda: PlainInfoNCE(), lambda: PlainInfoNCE(chunk_size=4)])
def test_pickle_and_deepcopy_keep_the_options(make):
    original = make()
    for twin in (pickle.loads(pickle.dumps(original)), copy.deepcopy(original)):
        assert repr(twin) == repr(original)
        assert twin.options == original.options
        assert hash(twin.options) == hash(original.options)


@pytest.mark.backends("torch")
def test_pickle_keeps_the_torch_modules_repr():
    for original in (InfoNCE(), InfoNCE(symmetric=True), SupervisedInfoNCE()):
        for twin in (pickle.loads(pickle.dumps(original)), copy.deepcopy(original)):
            assert repr(twin) == repr(original)
            assert twin.options == original.options


def test_options_compare_by_value():
    assert Options() == Options()
    assert Options(chunk_size=4, positives="supcon") == Options(chunk_size=4, positives="supcon")
    assert Options(chunk_size=4) != Options(chunk_size=5)
    assert Options(temperature=0.1) != Options(temperature=0.2)
    assert Options(in_batch_negatives=True) != Options(in_batch_negatives=None)
    assert len({Options(), Options(), Options(symmetric=True)}) == 2
    assert Options() != "Options()"
    # an array temperature by identity (its value may change)
    t = np.asarray(0.1)
    assert Options(temperature=t) == Options(temperature=t)
    assert Options(temperature=t) != Options(temperature=np.asarray(0.1))


def test_repr_shows_only_options_that_differ_from_their_defaults():
    shown = repr(pickle.loads(pickle.dumps(PlainInfoNCE(positives="own", chunk_size=None))))
    assert "positives" not in shown and "chunk_size" not in shown


# 10. Errors that name the argument


@pytest.mark.backends("torch")
def test_xp_of_another_library_is_named():
    q, k = np.ones((4, 3)), np.ones((4, 3))
    with pytest.raises(TypeError, match=r"xp must be the namespace of the arrays.*xp=torch"):
        info_nce(q, k, xp=torch)
    with pytest.raises(TypeError, match=r"xp must be the namespace of the arrays.*xp=numpy"):
        info_nce(torch.ones(4, 3), torch.ones(4, 3), xp=np)
    # a library's own module as xp is its namespace
    want = info_nce(torch.ones(4, 3), torch.eye(4, 3))
    torch.testing.assert_close(info_nce(torch.ones(4, 3), torch.eye(4, 3), xp=torch), want)
    np.testing.assert_allclose(info_nce(np.ones((4, 3)), np.eye(4, 3), xp=np), want.numpy())


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_labels_without_a_common_integer_dtype_are_named(library):
    q, k, neg = np.ones((4, 3)), np.eye(4, 3), np.ones((5, 3))
    labels, negative_labels = np.arange(4, dtype=np.uint64), np.arange(5, dtype=np.int64)
    arrays = [q, k, neg, labels, negative_labels]
    if library == "torch":
        arrays = [torch.from_numpy(x) for x in arrays]
    q, k, neg, labels, negative_labels = arrays
    with pytest.raises(TypeError, match=r"labels and negative_labels .*uint64.*int64"):
        info_nce(q, k, neg, labels=labels, negative_labels=negative_labels, in_batch_negatives=True)


# 11. A process whose first call is compiled: no warning, the same numbers


FIRST_CALL_COMPILED = textwrap.dedent(
    """
    import warnings
    import torch
    from infonce_xp import info_nce
    from infonce_xp.torch import InfoNCE

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = InfoNCE(temperature=torch.nn.Parameter(torch.tensor(0.07)))
        for fn, dynamic in ((lambda q, k: info_nce(q, k, temperature=0.07), True),
                            (lambda q, k: module(q, k, labels=torch.arange(5) % 2), False)):
            q = torch.randn(5, 4, requires_grad=True)
            k = torch.randn(5, 4)
            loss = torch.compile(fn, fullgraph=True, dynamic=dynamic)(q, k)
            loss.backward()
            q_eager = q.detach().clone().requires_grad_()
            fn(q_eager, k).backward()
            torch.testing.assert_close(q.grad, q_eager.grad)
    ours = [w for w in caught if "infonce_xp" in w.filename or "array_api_compat" in w.filename]
    ours += [w for w in caught if "lru_cache" in str(w.message)]
    print("WARNINGS", len(ours))
    for w in ours:
        print(str(w.message)[:300])
    """
)


@pytest.mark.backends("torch")
def test_a_first_call_compiled_warns_nothing():
    out = run_python(["-c", FIRST_CALL_COMPILED], timeout=600).stdout
    assert "WARNINGS 0" in out, out
