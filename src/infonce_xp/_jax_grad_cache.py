"""Gradient caching for JAX: a loss over a batch whose encoder activations do not fit at once.

From ``infonce_xp`` it imports only the library-agnostic checks of ``_micro_batches``; it
calls the user's ``encode`` and ``loss_fn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._micro_batches import batch_size, check_micro_batch, check_rows, check_towers, describe

__all__ = ["grad_cache"]

_NO_PARAMS = object()


def grad_cache(
    encode: Callable[[Any, Any], Any],
    params: Any,
    inputs: Any,
    loss_fn: Callable[..., Any],
    micro_batch: int,
    *,
    loss_params: Any = _NO_PARAMS,
) -> tuple[jax.Array, Any]:
    """The loss over a whole batch and its gradient, encoding the batch a micro-batch at a time.

    Gradient caching (Gao et al., 2021, arXiv:2101.06983): (1) embed the batch in micro-batches
    without keeping what their gradient needs; (2) compute the loss of all the embeddings and
    the gradient of every embedding, in one ``jax.value_and_grad`` of ``loss_fn``; (3) for each
    micro-batch, ``jax.vjp`` of ``encode`` with its rows of that gradient, summed over the
    micro-batches. The result equals ``jax.value_and_grad`` of
    ``lambda p: loss_fn(*encode(p, inputs))`` (to floating-point round-off), with the encoder's
    residuals held for one micro-batch at a time.

    Functional and ``jax.jit``-able. Both loops are ``jax.lax.map``/``jax.lax.scan`` over the
    micro-batches that fill ``micro_batch`` rows, so the traced program does not grow with
    their number; a remainder (when ``micro_batch`` does not divide the batch) is encoded by
    one more call, without padding.

    Parameters
    ----------
    encode : callable
        ``encode(params, batch)`` maps a micro-batch of ``inputs`` (the same structure, fewer
        rows) to the embeddings: an array (one tower) or a tuple of arrays (one per tower,
        e.g. ``(query, key)``), each with one row per input row.
    params : pytree
        The encoder's parameters: what the gradient is taken with respect to. Its
        floating-point leaves get their gradient; other leaves (a dropout key, from
        ``jax.random.key`` or ``jax.random.PRNGKey``, integers) are passed to ``encode`` as they
        are and get ``float0`` zeros, as ``jax.value_and_grad(..., allow_int=True)`` gives.
    inputs : pytree
        The whole batch: a pytree (array, tuple, list, dict, ...) whose arrays all share the
        batch axis 0. Its shapes must be static (they are under ``jax.jit``).
    loss_fn : callable
        ``loss_fn(*embeddings)`` returns the 0-D loss of the whole batch's embeddings, e.g.
        ``functools.partial(infonce_xp.info_nce, symmetric=True, chunk_size=1024)``, or any
        function. With ``loss_params``, ``loss_fn(loss_params, *embeddings)``.
    micro_batch : int
        Rows per micro-batch (a Python int; the last one may be smaller): the memory of the
        encoder's residuals scales with it.
    loss_params : pytree, optional
        Parameters of the loss itself, such as a learned temperature. When given, they are
        passed to ``loss_fn`` first and their gradient is returned too (``float0`` zeros for
        leaves that are not floating point).

    Returns
    -------
    loss : jax.Array
        The 0-D loss.
    grads : pytree
        The gradient with respect to ``params``, in its structure; with ``loss_params``, the
        pair ``(params_grads, loss_params_grads)``.

    Raises
    ------
    TypeError
        If ``micro_batch`` is not an int, ``encode`` returns something other than
        floating-point arrays, or ``loss_fn`` returns no array.
    ValueError
        If ``micro_batch`` is not positive, the batch is empty, the arrays of ``inputs``
        differ in their number of rows, ``encode`` returns the wrong number of rows, or
        ``loss_fn`` returns no 0-D floating-point array.

    Notes
    -----
    To learn a temperature, pass it as (or inside) ``loss_params``: it does not go through
    ``encode``. Random numbers inside ``encode`` (dropout) must come from keys in ``inputs``
    or ``params``, so that both passes see the same ones; data augmentation is cheaper drawn
    once, before the call. A key in ``params`` is the same for every micro-batch: fold in
    something of each row (``jax.random.fold_in(key, row_id)``, with the ids in ``inputs``) to
    draw the masks that the whole batch would draw, whatever ``micro_batch``.

    Examples
    --------
    >>> import functools, jax, jax.numpy as jnp
    >>> from infonce_xp import info_nce
    >>> from infonce_xp.jax import grad_cache
    >>> def encode(w, views):  # one linear tower, shared by both views
    ...     return views["a"] @ w, views["b"] @ w
    >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    >>> w = jax.random.normal(k1, (16, 8))
    >>> views = {"a": jax.random.normal(k2, (100, 16)), "b": jax.random.normal(k3, (100, 16))}
    >>> loss_fn = functools.partial(info_nce, symmetric=True, chunk_size=32)
    >>> step = jax.jit(grad_cache, static_argnums=(0, 3, 4))
    >>> loss, grad = step(encode, w, views, loss_fn, 32)  # 3 micro-batches of 32, then 4 rows
    >>> full_loss, full_grad = jax.value_and_grad(lambda w: loss_fn(*encode(w, views)))(w)
    >>> bool(jnp.allclose(loss, full_loss)), bool(jnp.allclose(grad, full_grad, atol=1e-6))
    (True, True)
    """
    with_loss_params = loss_params is not _NO_PARAMS
    rows = _check(inputs, micro_batch)
    full, rest = divmod(rows, micro_batch)
    split = full * micro_batch

    def blocks(tree: Any) -> Any:  # the first ``split`` rows as (full, micro_batch, ...) blocks
        return jax.tree_util.tree_map(
            lambda x: jnp.reshape(x[:split], (full, micro_batch, *x.shape[1:])), tree
        )

    def tail(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: x[split:], tree)

    def run(p: Any, batch: Any, size: int) -> tuple[Any, ...]:
        return _embeddings(encode(p, batch), size)

    # (1) embeddings, micro-batch by micro-batch; nothing of the forward is kept for (3)
    parts: list[tuple[Any, ...]] = []
    if full:
        stacked = jax.lax.map(lambda b: run(params, b, micro_batch), blocks(inputs))
        parts.append(tuple(jnp.reshape(e, (split, *e.shape[2:])) for e in stacked))
    if rest:
        parts.append(run(params, tail(inputs), rest))
    check_towers([len(part) for part in parts], "array")
    embeddings = (
        tuple(jnp.concatenate(tower) for tower in zip(*parts)) if full and rest else parts[0]
    )

    # (2) the loss and the gradient of every embedding (and of the loss's own parameters)
    def loss_of(lp: Any, *es: Any) -> Any:
        loss = loss_fn(lp, *es) if with_loss_params else loss_fn(*es)
        _check_loss(loss)
        return loss

    argnums = tuple(range(len(embeddings) + 1))
    loss, cotangents = jax.value_and_grad(loss_of, argnums=argnums, allow_int=True)(
        loss_params if with_loss_params else None, *embeddings
    )
    loss_grads, cotangents = cotangents[0], cotangents[1:]
    cotangents = tuple(c.astype(e.dtype) for c, e in zip(cotangents, embeddings))

    # (3) the parameters' gradient: each micro-batch's vjp with its rows of the cotangents,
    # with respect to the floating-point leaves of params (keys and integers are constants)
    differentiable, merge = _partition(params)

    def pull(batch: Any, cotangent: tuple[Any, ...], size: int) -> list[Any]:
        _, vjp = jax.vjp(lambda leaves: run(merge(leaves), batch, size), differentiable)
        (grad,) = vjp(cotangent)
        return list(grad)

    grads = [jnp.zeros_like(leaf) for leaf in differentiable]
    if full:

        def step(total: list[Any], block: tuple[Any, tuple[Any, ...]]) -> tuple[list[Any], None]:
            return [t + g for t, g in zip(total, pull(*block, micro_batch))], None

        grads, _ = jax.lax.scan(step, grads, (blocks(inputs), blocks(cotangents)))
    if rest:
        grads = [t + g for t, g in zip(grads, pull(tail(inputs), tail(cotangents), rest))]
    param_grads = merge(grads, others=_float0_zeros)
    return loss, ((param_grads, loss_grads) if with_loss_params else param_grads)


def _partition(params: Any) -> tuple[list[Any], Callable[..., Any]]:
    """The leaves of ``params`` that have a gradient, and how to put such leaves back.

    ``merge(leaves)`` is ``params`` with ``leaves`` in their places; ``merge(leaves,
    others=f)`` puts ``f(leaf)`` in the places of the leaves without a gradient (random keys,
    integers: ``float0`` zeros, as ``jax.value_and_grad(..., allow_int=True)`` gives them).
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    wrt = [i for i, leaf in enumerate(leaves) if _differentiable(leaf)]

    def merge(values: list[Any], others: Callable[[Any], Any] = lambda leaf: leaf) -> Any:
        every = [others(leaf) for leaf in leaves]
        for i, value in zip(wrt, values):
            every[i] = value
        return jax.tree_util.tree_unflatten(treedef, every)

    return [leaves[i] for i in wrt], merge


def _differentiable(leaf: Any) -> bool:
    """Whether a leaf of ``params`` has a gradient: floating point (or complex), not a key."""
    dtype = leaf.dtype if hasattr(leaf, "dtype") else jnp.result_type(leaf)
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def _float0_zeros(leaf: Any) -> Any:
    return np.zeros(np.shape(leaf), dtype=jax.dtypes.float0)


def _check(inputs: Any, micro_batch: Any) -> int:
    """The batch size, after checking ``micro_batch`` and that the leaves share it."""
    check_micro_batch(micro_batch, expected="Python int (static under jax.jit)")
    leaves, _ = jax.tree_util.tree_flatten_with_path(inputs)
    sizes = {"inputs" + jax.tree_util.keystr(path): jnp.shape(leaf) for path, leaf in leaves}
    return batch_size(sizes, "array")


def _embeddings(out: Any, rows: int) -> tuple[Any, ...]:
    """``encode``'s result as a tuple of arrays, after checking it."""
    out = (out,) if isinstance(out, jax.Array) else out
    if not isinstance(out, (tuple, list)) or not all(isinstance(e, jax.Array) for e in out):
        raise TypeError(
            f"encode must return an array or a tuple of arrays (one per tower); got {describe(out)}"
        )
    check_rows([tuple(e.shape) for e in out], rows)
    for tower, e in enumerate(out):
        if not jnp.issubdtype(e.dtype, jnp.floating):
            raise TypeError(
                "encode must return floating-point embeddings (the loss's gradient flows "
                f"back through them); got tower {tower} of dtype {e.dtype} and shape {e.shape}"
            )
    return tuple(out)


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, jax.Array):
        raise TypeError(f"loss_fn must return a 0-D array; got {describe(loss)}")
    if loss.ndim != 0 or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(
            "loss_fn must return a 0-D floating-point array (a scalar loss, e.g. "
            f"reduction='mean'); got shape {loss.shape} and dtype {loss.dtype}"
        )
