"""``grad_cache`` (torch and JAX) gives the gradients of plain full-batch training.

The oracle is the same model trained the plain way: ``loss_fn(*encode(inputs)).backward()`` in
torch, ``jax.value_and_grad`` of the whole batch in JAX. Gradients must agree to 1e-5 (float32)
or 1e-10 (float64) of their largest entry. With dropout, the oracle encodes the same
micro-batches with their graphs, so that both draw the same masks; a version of ``grad_cache``
that does not replay the random state must then *fail* that comparison. Torch tests need
torch, JAX tests need JAX; each is skipped, with the reason, without it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest

from _grad_cache_common import assert_close

pytestmark = pytest.mark.backends("jax")


@pytest.fixture
def jax() -> Any:
    module = pytest.importorskip("jax", reason="grad_cache for JAX needs jax")
    module.config.update("jax_enable_x64", True)  # as conftest's jax backend does
    return module


# --------------------------------------------------------------------------------------------
# JAX


def jax_setup(jax: Any, dtype: str, rows: int = 37) -> tuple[Any, Any]:
    """Two MLP towers' parameters and a dict of two views, seeded."""
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), 6)

    def normal(key: Any, shape: tuple[int, ...]) -> Any:
        return jax.random.normal(key, shape, dtype=getattr(jnp, dtype)) / np.sqrt(shape[0])

    params = {
        "query": (normal(keys[0], (12, 24)), normal(keys[1], (24, 8))),
        "key": (normal(keys[2], (12, 24)), normal(keys[3], (24, 8))),
    }
    views = {"a": normal(keys[4], (rows, 12)) * 4, "b": (normal(keys[5], (rows, 12)) * 4,)}
    return params, views


def mlp(weights: tuple[Any, Any], x: Any) -> Any:
    import jax.numpy as jnp

    return jnp.tanh(x @ weights[0]) @ weights[1]


def two_towers(params: Any, views: Any) -> tuple[Any, Any]:
    return mlp(params["query"], views["a"]), mlp(params["key"], views["b"][0])


def shared(params: Any, views: Any) -> tuple[Any, Any]:
    return mlp(params["query"], views["a"]), mlp(params["query"], views["b"][0])


def compare_jax(
    jax: Any, encode: Any, params: Any, views: Any, loss_fn: Any, micro_batch: int, dtype: str
) -> None:
    from infonce_xp.jax import grad_cache

    def plain(p: Any) -> Any:
        embeddings = encode(p, views)
        return loss_fn(*(embeddings if isinstance(embeddings, tuple) else (embeddings,)))

    full = jax.value_and_grad(plain)
    expected_loss, expected = full(params)
    step = jax.jit(partial(grad_cache, encode, loss_fn=loss_fn, micro_batch=micro_batch))
    loss, grads = step(params, views)
    assert loss.dtype == expected_loss.dtype and loss.shape == ()
    assert_close(loss, expected_loss, dtype, "loss")
    paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    for (path, want), got in zip(paths, jax.tree_util.tree_leaves(grads)):
        assert got.dtype == want.dtype
        assert_close(got, want, dtype, jax.tree_util.keystr(path))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("micro_batch", [8, 10, 37, 64])
def test_jax_two_towers(jax: Any, dtype: str, micro_batch: int) -> None:
    from infonce_xp import info_nce

    params, views = jax_setup(jax, dtype, 40 if micro_batch == 8 else 37)
    compare_jax(jax, two_towers, params, views, info_nce, micro_batch, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "options", [{"symmetric": True}, {"chunk_size": 5}, {"symmetric": True, "chunk_size": 6}]
)
def test_jax_shared_encoder(jax: Any, dtype: str, options: dict[str, Any]) -> None:
    from infonce_xp import info_nce

    params, views = jax_setup(jax, dtype)
    params = {"query": params["query"]}
    compare_jax(jax, shared, params, views, partial(info_nce, **options), 10, dtype)


def test_jax_learned_temperature(jax: Any) -> None:
    import jax.numpy as jnp

    from infonce_xp import info_nce
    from infonce_xp.jax import grad_cache

    params, views = jax_setup(jax, "float64")
    temperature = jnp.asarray(0.2, jnp.float64)

    def loss_fn(t: Any, q: Any, k: Any) -> Any:
        return info_nce(q, k, temperature=t, symmetric=True, chunk_size=8)

    expected_loss, (expected, expected_t) = jax.value_and_grad(
        lambda p, t: loss_fn(t, *two_towers(p, views)), argnums=(0, 1)
    )(params, temperature)
    step = jax.jit(grad_cache, static_argnums=(0, 3, 4))
    loss, (grads, grad_t) = step(two_towers, params, views, loss_fn, 10, loss_params=temperature)
    assert_close(loss, expected_loss, "float64", "loss")
    assert abs(float(expected_t)) > 1e-3
    assert_close(grad_t, expected_t, "float64", "temperature")
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected)):
        assert_close(got, want, "float64")


def test_jax_one_tower(jax: Any) -> None:

    params, views = jax_setup(jax, "float64")

    def encode(p: Any, x: Any) -> Any:
        return mlp(p["query"], x)

    def spread(e: Any) -> Any:
        return jax.nn.logsumexp(e @ e.T, axis=1).mean()

    compare_jax(jax, encode, params, views["a"], spread, 9, "float64")


def test_jax_loop_is_not_unrolled(jax: Any) -> None:
    """A scan over the micro-batches: the program's size does not grow with their number."""
    from infonce_xp import info_nce
    from infonce_xp.jax import grad_cache

    def program(rows: int) -> str:
        params, views = jax_setup(jax, "float32", rows)
        step = partial(grad_cache, two_towers, loss_fn=info_nce, micro_batch=4)
        return str(jax.make_jaxpr(step)(params, views))

    few, many = program(4 * 3 + 1), program(4 * 30 + 1)
    assert "scan" in few
    assert few.count("dot_general") == many.count("dot_general")
    # 2 towers x (first pass, vjp) x (the scan's body, the remainder), whatever the batch
    assert few.count("tanh") == many.count("tanh") == 8


def dropout(jax: Any, key: Any, ids: Any, hidden: Any) -> Any:
    """Dropout at rate 1/2 with one mask per row, drawn from ``key`` and the row's id."""

    def keep(i: Any, row: Any) -> Any:
        return jax.random.bernoulli(jax.random.fold_in(key, i), 0.5, row.shape)

    return jax.numpy.where(jax.vmap(keep)(ids, hidden), 2 * hidden, 0.0)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_jax_keys_and_integers_in_params(jax: Any, jit: bool) -> None:
    """Leaves without a gradient ride along: float0 zeros, as value_and_grad(allow_int=True)."""
    import jax.numpy as jnp

    from infonce_xp import info_nce
    from infonce_xp.jax import grad_cache

    params, views = jax_setup(jax, "float64")
    params = {**params, "new key": jax.random.key(7), "raw key": jax.random.PRNGKey(8), "steps": 3}
    batch = (jnp.arange(37), views)

    def encode(p: Any, b: Any) -> tuple[Any, Any]:
        ids, v = b
        query = dropout(jax, p["new key"], ids, jnp.tanh(v["a"] @ p["query"][0])) @ p["query"][1]
        key = dropout(jax, p["raw key"], ids, jnp.tanh(v["b"][0] @ p["key"][0])) @ p["key"][1]
        return query, key * p["steps"]

    def plain(p: Any) -> Any:
        return info_nce(*encode(p, batch), symmetric=True)

    expected_loss, expected = jax.value_and_grad(plain, allow_int=True)(params)
    step = partial(grad_cache, encode, loss_fn=partial(info_nce, symmetric=True), micro_batch=10)
    loss, grads = (jax.jit(step) if jit else step)(params, batch)
    assert_close(loss, expected_loss, "float64", "loss")
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(expected)
    paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    for (path, want), got in zip(paths, jax.tree_util.tree_leaves(grads)):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), jax.tree_util.keystr(path)
        if want.dtype != jax.dtypes.float0:
            assert_close(got, want, "float64", jax.tree_util.keystr(path))
    assert (
        grads["new key"].dtype
        == grads["raw key"].dtype
        == grads["steps"].dtype
        == jax.dtypes.float0
    )


BAD_JAX = {
    "micro_batch zero": (
        {"micro_batch": 0},
        ValueError,
        "micro_batch must be a positive int; got 0",
    ),
    "micro_batch float": (
        {"micro_batch": 2.0},
        TypeError,
        "micro_batch must be a positive Python int",
    ),
    "rows differ": (
        {"inputs": "rows differ"},
        ValueError,
        r"got inputs\['a'\]: 6, inputs\['b'\]\[0\]: 5",
    ),
    "empty": ({"inputs": "empty"}, ValueError, "inputs must hold a non-empty batch; got 0 rows"),
    "0-D": ({"inputs": "0-D"}, ValueError, r"inputs\['c'\] is 0-D"),
    "encode rows": (
        {"encode": "rows"},
        ValueError,
        r"encode must return one row per input row: 4 rows",
    ),
    "encode type": ({"encode": "type"}, TypeError, "encode must return an array or a tuple"),
    "encode integers": (
        {"encode": "integers"},
        TypeError,
        r"encode must return floating-point embeddings .* got tower 1 of dtype int32 and "
        r"shape \(4, 8\)",
    ),
    "loss vector": (
        {"loss_fn": "vector"},
        ValueError,
        r"loss_fn must return a 0-D .* got shape \(6,\)",
    ),
    "loss float": ({"loss_fn": "float"}, TypeError, "loss_fn must return a 0-D array; got a float"),
}


@pytest.mark.parametrize("case", BAD_JAX.values(), ids=BAD_JAX.keys())
def test_jax_bad_arguments(jax: Any, case: tuple[dict[str, Any], type, str]) -> None:
    import jax.numpy as jnp

    from infonce_xp import info_nce
    from infonce_xp.jax import grad_cache

    change, error, message = case
    params, views = jax_setup(jax, "float32", 6)
    inputs = {
        "rows differ": {"a": views["a"], "b": (views["b"][0][:5],)},
        "empty": {"a": views["a"][:0], "b": (views["b"][0][:0],)},
        "0-D": {**views, "c": jnp.float32(1)},
    }.get(change.get("inputs"), views)
    encode = {
        "rows": lambda p, v: (two_towers(p, v)[0], two_towers(p, v)[1][:3]),
        "type": lambda p, v: {"q": two_towers(p, v)[0]},
        "integers": lambda p, v: (two_towers(p, v)[0], two_towers(p, v)[1].astype(jnp.int32)),
    }.get(change.get("encode"), two_towers)
    loss_fn = {
        "vector": partial(info_nce, reduction="none"),
        "float": lambda q, k: 1.0,
    }.get(change.get("loss_fn"), info_nce)
    with pytest.raises(error, match=message):
        grad_cache(encode, params, inputs, loss_fn, change.get("micro_batch", 4))
