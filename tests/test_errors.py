"""Bad input: a clear exception naming the argument, raised before any computation."""

from __future__ import annotations

import numpy as np
import pytest

from infonce_xp import InfoNCE, info_nce, info_nce_value_and_grad

rng = np.random.default_rng(0)
Q, K, NEG, PAIRED = (
    rng.normal(size=(8, 4)),
    rng.normal(size=(8, 4)),
    rng.normal(size=(5, 4)),
    rng.normal(size=(8, 5, 4)),
)


@pytest.mark.parametrize(
    "args, kwargs, error, words",
    [
        ((Q[0], K), {}, ValueError, ["query", "2 dimensions", "(4,)"]),
        ((Q, K[None]), {}, ValueError, ["positive_key", "2 dimensions", "(1, 8, 4)"]),
        (
            (Q, K, PAIRED),
            {},
            ValueError,
            ["negative_keys", "2 dimensions", "unpaired", "(8, 5, 4)"],
        ),
        (
            (Q, K, NEG),
            {"negative_mode": "paired"},
            ValueError,
            ["negative_keys", "3 dimensions", "paired"],
        ),
        ((Q, K[:5]), {}, ValueError, ["positive_key", "8", "5"]),
        (
            (Q, K, PAIRED[:3]),
            {"negative_mode": "paired"},
            ValueError,
            ["negative_keys", "one row per query", "(3, 5, 4)"],
        ),
        ((Q, K[:, :3]), {}, ValueError, ["positive_key", "4 features", "(8, 3)"]),
        ((Q, K, NEG[:, :2]), {}, ValueError, ["negative_keys", "4 features", "(5, 2)"]),
        (
            (Q, K),
            {"negative_mode": "pairwise"},
            ValueError,
            ["negative_mode", "'pairwise'", "paired"],
        ),
        ((Q, K), {"reduction": "avg"}, ValueError, ["reduction", "'avg'", "mean"]),
        ((Q, K), {"temperature": 0.0}, ValueError, ["temperature", "0.0"]),
        ((Q, K), {"temperature": -0.1}, ValueError, ["temperature", "-0.1"]),
        ((Q, K), {"temperature": float("nan")}, ValueError, ["temperature", "nan"]),
        ((Q, K), {"temperature": float("inf")}, ValueError, ["temperature", "inf"]),
        ((Q, K), {"temperature": "0.1"}, TypeError, ["temperature", "str"]),
        ((Q, K), {"temperature": np.ones(2)}, ValueError, ["temperature", "0-D", "(2,)"]),
        ((Q[:0], K[:0]), {}, ValueError, ["query", "at least one", "(0, 4)"]),
        ((Q[:, :0], K[:, :0]), {}, ValueError, ["query", "(8, 0)"]),
        ((Q.astype(int), K), {}, TypeError, ["query", "floating", "int64"]),
        ((Q, K > 0), {}, TypeError, ["positive_key", "floating", "bool"]),
        ((Q, K.astype(complex)), {}, TypeError, ["positive_key", "floating", "complex128"]),
        ((Q.tolist(), K), {}, TypeError, ["query", "array", "list"]),
        ((Q, 3.0), {}, TypeError, ["positive_key", "array", "float"]),
        ((Q, K, NEG), {"symmetric": True}, ValueError, ["symmetric", "negative_keys", "(5, 4)"]),
        ((Q, K), {"symmetric": 1}, TypeError, ["symmetric", "True or False"]),
        ((Q, K), {"normalize": None}, TypeError, ["normalize", "True or False"]),
        ((Q, K), {"chunk_size": 0}, ValueError, ["chunk_size", "at least 1", "0"]),
        ((Q, K), {"chunk_size": -3}, ValueError, ["chunk_size", "-3"]),
        ((Q, K), {"chunk_size": 2.0}, TypeError, ["chunk_size", "int", "float"]),
        ((Q, K), {"chunk_size": True}, TypeError, ["chunk_size", "int", "bool"]),
        ((Q, K), {"gather": "all"}, TypeError, ["gather", "callable"]),
        ((Q, K), {"gather": lambda x: x}, TypeError, ["gather", "rank()"]),
    ],
)
def test_bad_input_is_named(args, kwargs, error, words):
    for function in (info_nce, info_nce_value_and_grad):
        with pytest.raises(error) as info:
            function(*args, **kwargs)
        for word in words:
            assert word in str(info.value), (word, str(info.value))


@pytest.mark.backends("torch")
def test_two_libraries_in_one_call():
    import torch

    with pytest.raises(
        TypeError, match=r"one array library.*query: numpy.ndarray, positive_key: torch.Tensor"
    ):
        info_nce(Q, torch.tensor(K))


def test_class_checks_options_at_construction():
    with pytest.raises(ValueError, match="negative_mode"):
        InfoNCE(negative_mode="both")
    with pytest.raises(ValueError, match="temperature"):
        InfoNCE(temperature=0)
    with pytest.raises(ValueError, match="chunk_size"):
        InfoNCE(chunk_size=0)


def test_grad_output_shape_is_checked():
    with pytest.raises(ValueError, match=r"grad_output.*\(8,\)"):
        info_nce_value_and_grad(Q, K, reduction="none", grad_output=np.ones(()))


def test_inputs_are_never_modified(backend):
    arrays = [Q, K, NEG, PAIRED]
    for a in arrays:
        a.flags.writeable = backend.name != "numpy"  # read-only NumPy arrays must work
    try:
        for negatives, mode in ((None, "unpaired"), (NEG, "unpaired"), (PAIRED, "paired")):
            for chunk_size in (None, 3):
                for normalize in (True, False):
                    given = backend.asarrays(Q, K, negatives)
                    before = [None if a is None else backend.to_numpy(a).copy() for a in given]
                    info_nce_value_and_grad(
                        *given, negative_mode=mode, chunk_size=chunk_size, normalize=normalize
                    )
                    info_nce(
                        *given,
                        negative_mode=mode,
                        chunk_size=chunk_size,
                        normalize=normalize,
                        symmetric=negatives is None,
                    )
                    for a, b in zip(given, before):
                        if a is not None:
                            np.testing.assert_array_equal(backend.to_numpy(a), b)
        info_nce(Q, K, NEG)
    finally:
        for a in arrays:
            a.flags.writeable = True


def test_a_checked_signature_still_checks_what_differs(backend):
    """A call whose facts passed before skips the checks (see ``check_call``): any fact that
    differs (shape, dtype, library, options) is checked again and named."""
    q, k, neg = backend.asarrays(Q, K, NEG)
    first = info_nce(q, k, neg, temperature=0.2)  # remembered
    again = info_nce(q, k, neg, temperature=0.2)
    np.testing.assert_array_equal(backend.to_numpy(again), backend.to_numpy(first))
    (short,) = backend.asarrays(K[:5])
    with pytest.raises(ValueError, match=r"positive_key.*8 and 5"):
        info_nce(q, short, neg, temperature=0.2)
    (paired,) = backend.asarrays(PAIRED)
    with pytest.raises(ValueError, match=r"negative_keys.*2 dimensions"):
        info_nce(q, k, paired, temperature=0.2)
    with pytest.raises(ValueError, match=r"negative_keys.*3 dimensions"):
        info_nce(q, k, neg, temperature=0.2, negative_mode="paired")
    with pytest.raises(TypeError, match="positive_key must be an array"):
        info_nce(q, K.tolist(), neg, temperature=0.2)
    (ids,) = backend.asarrays(np.arange(8.0))
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        info_nce(q, k, labels=ids)
    # the same facts under another name: the negatives' facts given as labels
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        info_nce(q, k, labels=neg, temperature=0.2)
    loss = InfoNCE(temperature=0.2)
    np.testing.assert_allclose(backend.to_numpy(loss(q, k, neg)), backend.to_numpy(first))
    loss.reduction = "none"  # new options: a new signature
    assert loss(q, k, neg).shape == (8,)


@pytest.mark.backends("torch")
def test_a_remembered_check_keeps_no_array():
    """The checked facts of a call are kept, never its arrays (which may be large)."""
    import gc
    import weakref

    import torch

    q, k = torch.tensor(Q, requires_grad=True), torch.tensor(K)
    info_nce(q, k).backward()
    info_nce(q, k).backward()  # the second call reuses the first's check
    refs = [weakref.ref(q), weakref.ref(k)]
    del q, k
    gc.collect()
    assert all(ref() is None for ref in refs)
