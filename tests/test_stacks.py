"""Normalisation of stacked rows (``_stacks.py``): whatever the grouping of the inputs into
stacks, values and gradients are the seed's, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from infonce_xp import _call, _stacks, info_nce, info_nce_value_and_grad
from reference import seed

rng = np.random.default_rng(3)
Q, K = rng.normal(size=(2, 6, 5))
NEGATIVES = {"unpaired": rng.normal(size=(7, 5)), "paired": rng.normal(size=(6, 3, 5))}


def test_groups_split_where_a_stack_would_exceed_the_limit(monkeypatch):
    shapes = {"a": (4, 5), "b": (2, 5), "c": (3, 2, 5)}

    def groups():
        return tuple(tuple(name for name, _, _ in group) for group in _stacks.layout(shapes))

    assert groups() == (("a", "b", "c"),)
    assert _stacks.layout(shapes)[0][2] == ("c", (3, 2, 5), 6)  # rows of the stack
    monkeypatch.setattr(_stacks, "STACK_LIMIT", 25)
    assert groups() == (("a",), ("b",), ("c",))
    monkeypatch.setattr(_stacks, "STACK_LIMIT", 45)
    assert groups() == (("a", "b"), ("c",))
    monkeypatch.setattr(_stacks, "STACK_LIMIT", 1)
    assert groups() == (("a",), ("b",), ("c",))  # an array alone may exceed it


@pytest.mark.parametrize("limit", [1, 65, 1 << 15])
@pytest.mark.parametrize("mode", ["in-batch", "unpaired", "paired"])
def test_any_grouping_gives_the_seeds_values_and_gradients(backend, monkeypatch, limit, mode):
    monkeypatch.setattr(_stacks, "STACK_LIMIT", limit)
    monkeypatch.setattr(_call, "_CHECKED", {})  # plans made under another limit
    neg = NEGATIVES.get(mode)
    options = {"negative_mode": mode} if mode == "paired" else {}
    loss, grads = info_nce_value_and_grad(*backend.asarrays(Q, K, neg), **options)
    want, want_grads = seed(Q, K, neg, mode="paired" if mode == "paired" else "unpaired", grad=True)
    np.testing.assert_allclose(backend.to_numpy(loss), want, rtol=1e-10)
    for got, ref in zip(grads, want_grads):
        if ref is not None:
            np.testing.assert_allclose(backend.to_numpy(got), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("limit", [1, 65, 1 << 15])
@pytest.mark.parametrize("frozen", ["query", "positive_key", "negative_keys"])
def test_gradients_of_some_inputs_from_any_grouping(monkeypatch, limit, frozen):
    """Inputs whose gradients nobody asks for leave holes in a stack: the others' gradients are
    normalised around them."""
    import torch

    monkeypatch.setattr(_stacks, "STACK_LIMIT", limit)
    monkeypatch.setattr(_call, "_CHECKED", {})  # plans made under another limit
    arrays = {"query": Q, "positive_key": K, "negative_keys": NEGATIVES["unpaired"]}
    ours = {k: torch.tensor(v, requires_grad=k != frozen) for k, v in arrays.items()}
    theirs = {k: torch.tensor(v, requires_grad=k != frozen) for k, v in arrays.items()}
    info_nce(*ours.values()).backward()
    import info_nce as seed_module

    seed_module.info_nce(*theirs.values()).backward()
    for name in arrays:
        if name == frozen:
            assert ours[name].grad is None
        else:
            torch.testing.assert_close(ours[name].grad, theirs[name].grad, rtol=1e-10, atol=1e-12)
