"""A whole call's loss rows and their gradient: dtypes, normalisation, directions, dense or tiled.

Backend adapters (torch autograd, JAX custom_vjp) and ``info_nce_value_and_grad`` all run these
two functions; nothing else holds the math.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _core, _tiled
from ._arrays import Scan, as_array, python_scan
from ._typing import Array, Namespace

# Names of the arrays a call may hold. The ``all_*`` ones are gathered from every worker.
QUERY, KEY, NEGATIVES = "query", "positive_key", "negative_keys"
ALL_QUERIES, ALL_KEYS, ALL_NEGATIVES = "all_queries", "all_keys", "all_negatives"


class Config(NamedTuple):
    """The static options of a call (hashable: a ``jax.custom_vjp`` static argument)."""

    mode: str  # "in-batch", "unpaired" or "paired"
    symmetric: bool = False
    normalize: bool = True
    chunk_size: int | None = None


class Direction(NamedTuple):
    anchor: str
    positive: str
    candidates: str
    holds_positive: bool  # the candidates include each anchor's positive (in-batch)


def directions(config: Config, gathered: bool) -> tuple[Direction, ...]:
    """The query->key (and, symmetric, key->query) problems whose mean is the loss."""
    if config.mode == "in-batch":
        out = [Direction(QUERY, KEY, ALL_KEYS if gathered else KEY, True)]
        if config.symmetric:
            out.append(Direction(KEY, QUERY, ALL_QUERIES if gathered else QUERY, True))
        return tuple(out)
    if config.mode == "unpaired":
        return (Direction(QUERY, KEY, ALL_NEGATIVES if gathered else NEGATIVES, False),)
    return (Direction(QUERY, KEY, NEGATIVES, False),)


def tile(config: Config, candidates: Array) -> int | None:
    """The tile size, or None for all logits at once (no ``chunk_size``, or no candidate)."""
    return None if candidates.shape[-2] == 0 else config.chunk_size


def compute_dtype(xp: Namespace, dtype: Any) -> Any:
    """At least float32: half-precision inputs are upcast for the logits and log-sum-exp."""
    return dtype if xp.finfo(dtype).bits >= 32 else xp.float32


class Residuals(NamedTuple):
    """Arrays only (a pytree for ``jax.custom_vjp``); the rest is re-derived from the call."""

    inputs: dict[str, Array]
    units: dict[str, Array]
    lengths: dict[str, Array | None]
    per_direction: list[tuple[Array, ...]]


def scale_of(xp: Namespace, temperature: Any, dtype: Any) -> Any:
    """The inverse temperature: a Python float, or a 0-D array of the compute dtype."""
    if isinstance(temperature, (int, float)):
        return 1.0 / temperature
    return as_array(xp, 1.0 / xp.astype(temperature, dtype))


def forward(
    xp: Namespace,
    arrays: dict[str, Array],
    temperature: Any,
    config: Config,
    offset: Any = 0,
    scan: Scan | None = None,
) -> tuple[Array, Residuals]:
    """Loss rows (N,) in the compute dtype, and what the backward needs.

    ``arrays`` maps the names above to raw inputs; ``offset`` is where this worker's positives
    start among the gathered keys; ``temperature`` is a Python number or a 0-D array.
    """
    dtype = compute_dtype(xp, xp.result_type(*arrays.values()))
    units, lengths = {}, {}
    for name, x in arrays.items():
        x = x if x.dtype == dtype else xp.astype(x, dtype)
        units[name], lengths[name] = _core.normalise(xp, x) if config.normalize else (x, None)
    scale = scale_of(xp, temperature, dtype)
    rows: Any = None
    per_direction = []
    for d in directions(config, ALL_KEYS in arrays or ALL_NEGATIVES in arrays):
        a, b, c = units[d.anchor], units[d.positive], units[d.candidates]
        where = offset if d.holds_positive else None
        chunk = tile(config, c)
        if chunk is None:
            part, res = _core.forward(xp, a, b, c, scale, where)
        else:
            part, res = _tiled.forward(xp, a, b, c, scale, where, chunk, scan or python_scan(xp))
        rows = part if rows is None else rows + part
        per_direction.append(res)
    if len(per_direction) > 1:
        rows = rows / len(per_direction)
    return rows, Residuals(dict(arrays), units, lengths, per_direction)


def backward(
    xp: Namespace,
    residuals: Residuals,
    grad_rows: Array,
    temperature: Any,
    config: Config,
    offset: Any = 0,
    scan: Scan | None = None,
) -> dict[str, Array]:
    """Gradients of ``sum(grad_rows * rows)``: one per array name, in that array's dtype, and
    ``"temperature"`` when the temperature is an array. Arguments as given to ``forward``."""
    units = residuals.units
    dtype = units[QUERY].dtype
    scale = scale_of(xp, temperature, dtype)
    grad_rows = grad_rows if grad_rows.dtype == dtype else xp.astype(grad_rows, dtype)
    if len(residuals.per_direction) > 1:
        grad_rows = grad_rows / len(residuals.per_direction)
    grads: dict[str, Array] = {}
    grad_scale = None
    gathered = ALL_KEYS in units or ALL_NEGATIVES in units
    for d, res in zip(directions(config, gathered), residuals.per_direction):
        a, b, c = units[d.anchor], units[d.positive], units[d.candidates]
        where = offset if d.holds_positive else None
        chunk = tile(config, c)
        if chunk is None:
            parts = _core.backward(xp, a, b, c, scale, res, grad_rows, where)
        else:
            loop = scan or python_scan(xp)
            parts = _tiled.backward(xp, a, b, c, scale, where, chunk, loop, res, grad_rows)
        for name, g in zip((d.anchor, d.positive, d.candidates), parts[:3]):
            if g is not None:
                grads[name] = g if name not in grads else grads[name] + g
        if parts[3] is not None:
            grad_scale = parts[3] if grad_scale is None else grad_scale + parts[3]
    out = {}
    for name, g in grads.items():
        length = residuals.lengths[name]
        if length is not None:
            g = _core.normalise_backward(xp, units[name], length, g)
        out[name] = _narrow(xp, g, residuals.inputs[name].dtype)
    if not isinstance(temperature, (int, float)):
        # d/dt f(1/t) = -f'(s) s^2
        grad_temperature = as_array(xp, -(grad_scale * scale * scale))
        out["temperature"] = _narrow(xp, grad_temperature, temperature.dtype)
    return out


def _narrow(xp: Namespace, x: Array, dtype: Any) -> Array:
    """Cast to ``dtype``: entries beyond a narrower dtype's range become inf, as the seed's do,
    so that loss scalers see the overflow."""
    return x if x.dtype == dtype else xp.astype(x, dtype)
