"""The per-call caches (checked calls, options of function calls, namespaces and traits): they
keep no array, stay bounded, answer threads alike, and never serve a stale answer after an
option, a dtype, a shape or ``requires_grad`` changes."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

from infonce_xp import InfoNCE, _call, _options, info_nce
from reference import reduce, reference_rows

RNG = np.random.default_rng(0)


def reference_loss(q, k, neg=None, reduction="mean", chunk_size=None, **options):
    """The float64 reference, reduced (``chunk_size`` does not change the numbers)."""
    return reduce(reference_rows(q, k, neg, **options), reduction)


def problem(n=6, d=4, dtype="float64"):
    return [RNG.standard_normal((n, d)).astype(dtype) for _ in range(2)]


def test_no_array_is_kept_after_a_call(backend):
    q, k = backend.asarrays(*problem())
    try:
        refs = [weakref.ref(q), weakref.ref(k)]
    except TypeError:
        pytest.skip(f"{backend.name} arrays take no weak reference")
    for _ in range(2):  # the second call is served by the cache
        info_nce(q, k)
        InfoNCE(temperature=0.2)(q, k)
    del q, k
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_the_caches_stay_bounded():
    for n in range(1, 200):
        q, k = problem(n=n, d=2)
        info_nce(q, k, temperature=0.1 + n / 1000)
    assert len(_call._CHECKED) <= 64
    assert len(_options._RECENT) <= 64


def test_no_stale_answer_after_a_change(backend):
    q, k = problem()
    neg = RNG.standard_normal((5, 4))
    a, b, c = backend.asarrays(q, k, neg)
    cases = [
        (dict(), (q, k, None)),
        (dict(temperature=0.5), (q, k, None)),
        (dict(reduction="sum"), (q, k, None)),
        (dict(symmetric=True), (q, k, None)),
        (dict(), (q, k, neg)),
        (dict(chunk_size=2), (q, k, None)),
    ]
    for _ in range(2):  # each option after every other, twice: the cache is warm the second time
        for options, (q_, k_, n_) in cases:
            arrays = (a, b, None if n_ is None else c)
            got = info_nce(*arrays, **options)
            want = reference_loss(q_, k_, n_, **options)
            backend.assert_close(got, np.asarray(want), rtol=1e-10, atol=1e-12)
    # a dtype change: the result follows the new dtype
    for dtype in ("float32", "float64", "float32"):
        got = info_nce(*backend.asarrays(q, k, dtype=dtype))
        backend.assert_close(got, np.asarray(reference_loss(q, k)), rtol=2e-5, dtype=dtype)
    # a shape change with the same options
    q2, k2 = problem(n=9)
    got = info_nce(*backend.asarrays(q2, k2))
    backend.assert_close(got, np.asarray(reference_loss(q2, k2)), rtol=1e-10)


@pytest.mark.backends("torch")
def test_requires_grad_changes_are_followed():
    import torch

    q, k = (torch.from_numpy(x) for x in problem())
    for wants in (True, False, True):
        leaf = q.clone().requires_grad_(wants)
        loss = info_nce(leaf, k)
        assert loss.requires_grad is wants
        if wants:
            loss.backward()
            assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_threads_get_their_own_answers():
    cases = [(problem(n=n), dict(temperature=t)) for n in (3, 5, 8) for t in (0.05, 0.1, 0.7)]
    want = [reference_loss(q, k, **o) for (q, k), o in cases]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for _ in range(30):
                for step in range(len(cases)):
                    j = (step + i) % len(cases)
                    (q, k), options = cases[j]
                    got = info_nce(q, k, **options)
                    np.testing.assert_allclose(got, want[j], rtol=1e-12)
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
