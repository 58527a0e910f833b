"""The checks that every row-scoring option's tests run (not a test module): the analytic
gradients against finite differences of the float64 reference, and the tiled execution against
the untiled one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import infonce_xp
from reference import finite_difference
from reference_recipes import recipe_loss

TILED = {"rtol": 1e-12, "atol": 1e-12}
NAMES = ("query", "positive_key", "negative_keys", "temperature")


def assert_gradients_match_finite_differences(
    backend: Any,
    arrays: tuple[Any, ...],
    core: dict[str, Any],
    reference: dict[str, Any],
    t: float,
    *,
    loss: Callable[..., Any] = recipe_loss,
) -> None:
    """``info_nce_value_and_grad`` of ``arrays`` (NumPy; ``core``: the options, arrays among
    them already of ``backend``) against finite differences of ``loss`` (``recipe_loss`` unless
    given) with ``reference``, for every input and an array temperature ``t``, rows weighted at
    random."""
    q, k, neg = arrays
    grad_output = np.random.default_rng(3).normal(size=q.shape[0])
    _, grads = infonce_xp.info_nce_value_and_grad(
        *backend.asarrays(*arrays),
        temperature=backend.asarray(np.asarray(t)),
        reduction="none",
        grad_output=backend.asarray(grad_output),
        **core,
    )

    def value(q: Any, k: Any, neg: Any, t: float) -> float:
        rows = loss(q, k, neg, temperature=t, reduction="none", **reference)
        return float(rows @ grad_output)

    wanted = [
        finite_difference(lambda x: value(x, k, neg, t), q),
        finite_difference(lambda x: value(q, x, neg, t), k),
        None if neg is None else finite_difference(lambda x: value(q, k, x, t), neg),
        finite_difference(lambda x: value(q, k, neg, float(x)), np.asarray(t)),
    ]
    for name, got, fd in zip(NAMES, grads, wanted):
        assert (got is None) == (fd is None), name
        if fd is not None:
            backend.assert_close(got, fd, rtol=1e-6, atol=1e-8, err_msg=name)


def assert_tiled_equals_untiled(
    backend: Any, arrays: tuple[Any, ...], core: dict[str, Any], t: float, chunk_size: int
) -> None:
    """The loss rows and every gradient with ``chunk_size`` equal those without (``core`` as
    in :func:`assert_gradients_match_finite_differences`)."""
    common = {
        "temperature": backend.asarray(np.asarray(t)),
        "reduction": "none",
        "grad_output": backend.asarray(np.random.default_rng(1).normal(size=arrays[0].shape[0])),
        **core,
    }
    inputs = backend.asarrays(*arrays)
    loss, grads = infonce_xp.info_nce_value_and_grad(*inputs, **common)
    tiled_loss, tiled = infonce_xp.info_nce_value_and_grad(*inputs, chunk_size=chunk_size, **common)
    backend.assert_close(tiled_loss, loss, **TILED)
    for name, a, b in zip(NAMES, tiled, grads):
        assert (a is None) == (b is None), name
        if b is not None:
            backend.assert_close(a, b, **TILED, err_msg=name)
