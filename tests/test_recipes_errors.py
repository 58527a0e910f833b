"""The recipes' bad input: a ValueError or TypeError that names the argument, before any work."""

from __future__ import annotations

import numpy as np
import pytest

import infonce_xp

rng = np.random.default_rng(0)
Q, K, NEG, PAIRED = (
    rng.normal(size=(8, 4)),
    rng.normal(size=(8, 4)),
    rng.normal(size=(5, 4)),
    rng.normal(size=(8, 5, 4)),
)
Y, NY, PY = np.arange(8) % 3, np.arange(5) % 3, np.ones((8, 5), dtype=np.int64)


@pytest.mark.parametrize(
    "args, kwargs, error, words",
    [
        ((Q, K), {"labels": Y.astype(float)}, TypeError, ["labels", "integer", "float64"]),
        ((Q, K), {"labels": Y > 0}, TypeError, ["labels", "integer", "bool"]),
        ((Q, K), {"labels": Y.tolist()}, TypeError, ["labels", "array", "list"]),
        ((Q, K), {"labels": Y[:7]}, ValueError, ["labels", "(8,)", "(7,)"]),
        ((Q, K), {"labels": Y[:, None]}, ValueError, ["labels", "(8, 1)"]),
        ((Q, K, NEG), {"negative_labels": NY}, ValueError, ["negative_labels", "labels"]),
        ((Q, K), {"labels": Y, "negative_labels": NY}, ValueError, ["negative_labels"]),
        (
            (Q, K, NEG),
            {"labels": Y, "negative_labels": NY[:4]},
            ValueError,
            ["negative_labels", "(5,)", "(4,)"],
        ),
        (
            (Q, K, NEG),
            {"labels": Y, "negative_labels": NY.astype(np.float32)},
            TypeError,
            ["negative_labels", "integer", "float32"],
        ),
        (
            (Q, K, PAIRED),
            {"labels": Y, "negative_labels": NY, "negative_mode": "paired"},
            ValueError,
            ["negative_labels", "(8, 5)", "(5,)"],
        ),
        (
            (Q, K, NEG),
            {"labels": Y, "negative_labels": PY},
            ValueError,
            ["negative_labels", "(5,)", "(8, 5)"],
        ),
        (
            (Q, K),
            {"in_batch_negatives": False},
            ValueError,
            ["in_batch_negatives", "negative_keys"],
        ),
        ((Q, K), {"in_batch_negatives": 1}, TypeError, ["in_batch_negatives", "True"]),
        (
            (Q, K),
            {"same_view_negatives": "yes"},
            TypeError,
            ["same_view_negatives", "True or False"],
        ),
        ((Q, K, NEG), {"symmetric": True}, ValueError, ["symmetric", "in_batch_negatives"]),
        (
            (Q, K, NEG),
            {"symmetric": True, "in_batch_negatives": False},
            ValueError,
            ["symmetric", "in_batch_negatives"],
        ),
        ((Q, K), {"positives": "all"}, ValueError, ["positives", "'all'", "supcon"]),
    ],
)
def test_bad_recipe_input_is_named(args, kwargs, error, words):
    for function in (infonce_xp.info_nce, infonce_xp.info_nce_value_and_grad):
        with pytest.raises(error) as info:
            function(*args, **kwargs)
        for word in words:
            assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize(
    "args, kwargs, error, words",
    [
        ((Q, Y.astype(float)), {}, TypeError, ["labels", "integer", "float64"]),
        ((Q, Y[:7]), {}, ValueError, ["labels", "(8,)", "(7,)"]),
        ((Q, None), {}, TypeError, ["labels"]),
        ((Q[None], Y), {}, ValueError, ["embeddings", "2 dimensions", "(1, 8, 4)"]),
        ((Q.astype(int), Y), {}, TypeError, ["embeddings", "floating", "int64"]),
        ((Q, Y), {"positives": "own"}, ValueError, ["positives", "'own'", "supcon"]),
        ((Q, Y), {"reduction": "avg"}, ValueError, ["reduction", "'avg'"]),
        ((Q, Y), {"temperature": 0.0}, ValueError, ["temperature"]),
    ],
)
def test_bad_supervised_input_is_named(args, kwargs, error, words):
    with pytest.raises(error) as info:
        infonce_xp.supervised_info_nce(*args, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_classes_check_recipe_options_at_construction():
    with pytest.raises(ValueError, match="positives"):
        infonce_xp.InfoNCE(positives="each")
    with pytest.raises(TypeError, match="same_view_negatives"):
        infonce_xp.InfoNCE(same_view_negatives=None)
    with pytest.raises(ValueError, match="positives"):
        infonce_xp.SupervisedInfoNCE(positives="own")
    with pytest.raises(TypeError, match="labels"):
        infonce_xp.InfoNCE()(Q, K, labels=Y.astype(float))


@pytest.mark.backends("torch")
def test_labels_of_another_library():
    import torch

    with pytest.raises(TypeError, match="labels"):
        infonce_xp.info_nce(Q, K, labels=torch.asarray(Y))
    with pytest.raises(TypeError, match="labels"):
        infonce_xp.info_nce(torch.asarray(Q), torch.asarray(K), labels=Y)
    with pytest.raises(TypeError, match="negative_labels"):
        infonce_xp.info_nce(Q, K, NEG, labels=Y, negative_labels=torch.asarray(NY))
    with pytest.raises(TypeError, match="labels"):
        infonce_xp.supervised_info_nce(torch.asarray(Q), Y)
