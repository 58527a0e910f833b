"""A whole call's loss rows and their gradient: dtypes, normalisation, directions, dense or tiled.

Backend adapters (torch autograd, JAX custom_vjp) and ``info_nce_value_and_grad`` all run these
two functions; nothing else holds the math.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _cells, _cells_tiled, _core, _stacks, _tiled
from ._arrays import Scan, as_array, device, python_scan, result_type
from ._typing import Array, Namespace

# Names of the arrays a call may hold. The ``all_*`` ones are gathered from every worker; the
# labels are integer arrays that get no gradient.
QUERY, KEY, NEGATIVES = "query", "positive_key", "negative_keys"
ALL_QUERIES, ALL_KEYS, ALL_NEGATIVES = "all_queries", "all_keys", "all_negatives"
LABELS, NEGATIVE_LABELS = "labels", "negative_labels"
ALL_LABELS, ALL_NEGATIVE_LABELS = "all_labels", "all_negative_labels"
LABEL_NAMES = (LABELS, NEGATIVE_LABELS, ALL_LABELS, ALL_NEGATIVE_LABELS)


class Config(NamedTuple):
    """The static options of a call (hashable: a ``jax.custom_vjp`` static argument)."""

    mode: str  # the explicit negatives: "unpaired", "paired", or "in-batch" (none)
    symmetric: bool = False
    normalize: bool = True
    chunk_size: int | None = None
    positives: str = "own"
    in_batch: bool = True  # the keys are candidates
    same_view: bool = False  # the other anchors are candidates
    labelled: bool = False  # labels are given
    supervised: bool = False  # one set: anchors against each other, no own positive


class Direction(NamedTuple):
    """One anchors-against-candidates problem, by array name. ``shared`` lists the blocks of
    shared candidates with their role: "own" (anchor i's own positive is its row offset + i),
    "self" (its row offset + i is anchor i itself, hidden) or "plain"."""

    anchor: str
    positive: str | None  # an own positive outside the shared blocks
    shared: tuple[tuple[str, str], ...]
    paired: str | None = None  # (N, M, D) candidates of each anchor


def general(config: Config) -> bool:
    """Whether cells are classed by rule (:mod:`._cells`), not the plain one-positive path."""
    return (
        config.labelled
        or config.same_view
        or config.supervised
        or (config.in_batch and config.mode != "in-batch")
    )


_DIRECTIONS: dict[tuple[Config, bool], tuple[Direction, ...]] = {}  # plain dicts trace cleanly


def directions(config: Config, gathered: bool) -> tuple[Direction, ...]:
    """The query->key (and, symmetric, key->query) problems whose mean is the loss."""
    found = _DIRECTIONS.get((config, gathered))
    if found is None:
        found = _DIRECTIONS[config, gathered] = _directions(config, gathered)
    return found


def _directions(config: Config, gathered: bool) -> tuple[Direction, ...]:
    keys = ALL_KEYS if gathered else KEY
    queries = ALL_QUERIES if gathered else QUERY
    if config.supervised:
        return (Direction(QUERY, None, ((queries, "self"),)),)
    shared = []
    if config.in_batch:
        shared.append((keys, "own"))
    if config.same_view:
        shared.append((queries, "self"))
    if config.mode == "unpaired":
        shared.append((ALL_NEGATIVES if gathered else NEGATIVES, "plain"))
    paired = NEGATIVES if config.mode == "paired" else None
    out = [Direction(QUERY, None if config.in_batch else KEY, tuple(shared), paired)]
    if config.symmetric:
        back = [(queries, "own")] + ([(keys, "self")] if config.same_view else [])
        out.append(Direction(KEY, None, tuple(back)))
    return tuple(out)


def _labels_of(name: str) -> str:
    """The labels that go with the candidates ``name``."""
    if name in (ALL_KEYS, ALL_QUERIES):
        return ALL_LABELS
    if name == ALL_NEGATIVES:
        return ALL_NEGATIVE_LABELS
    return NEGATIVE_LABELS if name == NEGATIVES else LABELS


def tile(config: Config, candidates: Array) -> int | None:
    """The tile size, or None for all logits at once (no ``chunk_size``, or no candidate)."""
    return None if candidates.shape[-2] == 0 else config.chunk_size


_COMPUTE_DTYPES: dict[Any, Any] = {}


def compute_dtype(xp: Namespace, dtype: Any) -> Any:
    """At least float32: half-precision inputs are upcast for the logits and log-sum-exp."""
    found = _COMPUTE_DTYPES.get((xp.__name__, dtype))
    if found is None:
        wide = dtype if xp.finfo(dtype).bits >= 32 else xp.float32
        found = _COMPUTE_DTYPES[xp.__name__, dtype] = wide
    return found


class Residuals(NamedTuple):
    """Arrays only (a pytree for ``jax.custom_vjp``); the rest is re-derived from the call.

    ``units`` holds the rows of the floating inputs, normalised and stacked by the groups of
    :func:`._stacks.groups`, and ``lengths`` the two factors of their lengths (R, 1) per stack;
    both are None without normalisation.
    """

    inputs: dict[str, Array]
    units: tuple[Array, ...] | None
    lengths: tuple[Array, ...] | None
    per_direction: list[tuple[Array, ...]]
    split: dict[str, Array] | None = None  # the units by name: views a bridge may keep


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
) -> tuple[Array, Array | None, Residuals]:
    """Loss rows (N,) in the compute dtype, each row's weight in a mean (None: 1 each), and what
    the backward needs.

    ``arrays`` maps the names above to raw inputs (labels included); ``offset`` is where this
    worker's rows start among the gathered ones; ``temperature`` is a Python number or a 0-D
    array. A row's weight is its number of positive pairs with ``positives="pairs"``, else
    whether it has a positive.
    """
    units = _floats(xp, arrays)
    stacks = lengths = None
    if config.normalize:
        stacks, lengths, units = _stacks.normalise(xp, units)
    dtype = next(iter(units.values())).dtype
    scale = scale_of(xp, temperature, dtype)
    loop = scan or python_scan(xp)
    rows: Any = None
    counts: Any = None
    per_direction = []
    for d in directions(config, _gathered(units)):
        if general(config):
            p = _problem(xp, config, d, units, arrays, offset)
            part, count, res = _solver(config).forward(xp, p, scale, config.chunk_size, loop)
            if config.positives != "pairs":
                count = xp.astype(count > 0, dtype)
            counts = count if counts is None else counts + count
        else:
            names, where = _plain(d, offset)
            a, b, c = (units[name] for name in names)
            chunk = tile(config, c)
            if chunk is None:
                part, res = _core.forward(xp, a, b, c, scale, where)
            else:
                part, res = _tiled.forward(xp, a, b, c, scale, where, chunk, loop)
        rows = part if rows is None else rows + part
        per_direction.append(res)
    if len(per_direction) > 1:
        rows = rows / len(per_direction)
        counts = None if counts is None else counts / len(per_direction)
    split = units if stacks is not None else None
    return rows, counts, Residuals(dict(arrays), stacks, lengths, per_direction, split)


def _floats(xp: Namespace, arrays: dict[str, Array]) -> dict[str, Array]:
    """The floating arrays of a call (not the labels), in their compute dtype, by name: the
    order of the stacked units, the same after a pytree (JAX sorts a dict's keys) or not."""
    floats = {k: arrays[k] for k in sorted(arrays) if k not in LABEL_NAMES}
    dtype = compute_dtype(xp, result_type(xp, *floats.values()))
    return {k: x if x.dtype == dtype else xp.astype(x, dtype) for k, x in floats.items()}


def backward(
    xp: Namespace,
    residuals: Residuals,
    grad_rows: Array,
    temperature: Any,
    config: Config,
    offset: Any = 0,
    scan: Scan | None = None,
    wanted: Any = None,
) -> dict[str, Array]:
    """Gradients of ``sum(grad_rows * rows)``: one per floating array name, in that array's
    dtype, and ``"temperature"`` when the temperature is an array. Arguments as given to
    ``forward``; ``wanted``, if given, names the arrays whose gradient is returned."""
    units = residuals.split
    if units is None:
        units = _floats(xp, residuals.inputs)
        if residuals.units is not None:
            units = _stacks.units_of(xp, units, residuals.units)
    dtype = units[QUERY].dtype
    scale = scale_of(xp, temperature, dtype)
    grad_rows = grad_rows if grad_rows.dtype == dtype else xp.astype(grad_rows, dtype)
    if len(residuals.per_direction) > 1:
        grad_rows = grad_rows / len(residuals.per_direction)
    loop = scan or python_scan(xp)
    grads: dict[str, Array] = {}

    def add(name: str | None, g: Array | None) -> None:
        if name is not None and g is not None:
            grads[name] = g if name not in grads else grads[name] + g

    grad_scale = None
    for d, res in zip(directions(config, _gathered(units)), residuals.per_direction):
        if general(config):
            p = _problem(xp, config, d, units, residuals.inputs, offset)
            chunk = config.chunk_size
            solver = _solver(config)
            ga, gs, gp, g_scale = solver.backward(xp, p, scale, chunk, loop, res, grad_rows)
            add(d.anchor, ga)
            start = 0
            for name, _ in d.shared:
                rows = units[name].shape[0]
                add(name, gs[start : start + rows, ...] if len(d.shared) > 1 else gs)
                start += rows
            if d.positive is not None:
                add(d.positive, gp[:, 0, :])
                add(d.paired, gp[:, 1:, :])
            else:
                add(d.paired, gp)
        else:
            names, where = _plain(d, offset)
            a, b, c = (units[name] for name in names)
            chunk = tile(config, c)
            if chunk is None:
                wants_c = wanted is None or names[2] in wanted
                parts = _core.backward(xp, a, b, c, scale, res, grad_rows, where, wants_c)
            else:
                parts = _tiled.backward(xp, a, b, c, scale, where, chunk, loop, res, grad_rows)
            for name, g in zip(names, parts[:3]):
                add(name, g)
            g_scale = parts[3]
        if g_scale is not None:
            grad_scale = g_scale if grad_scale is None else grad_scale + g_scale
    if wanted is not None:
        grads = {k: g for k, g in grads.items() if k in wanted}
    if residuals.units is not None and residuals.lengths is not None and grads:
        grads = _stacks.backward(xp, residuals.units, residuals.lengths, units, grads)
    out = {name: _narrow(xp, g, residuals.inputs[name].dtype) for name, g in grads.items()}
    if not isinstance(temperature, (int, float)):
        # d/dt f(1/t) = -f'(s) s^2
        grad_temperature = as_array(xp, -(grad_scale * scale * scale))
        out["temperature"] = _narrow(xp, grad_temperature, temperature.dtype)
    return out


def _solver(config: Config) -> Any:
    """The module that computes a direction of cells classed by rule: dense or tiled."""
    return _cells if config.chunk_size is None else _cells_tiled


def _gathered(units: dict[str, Array]) -> bool:
    return ALL_KEYS in units or ALL_NEGATIVES in units or ALL_QUERIES in units


_LOCAL = {ALL_KEYS: KEY, ALL_QUERIES: QUERY, KEY: KEY, QUERY: QUERY}


def _plain(d: Direction, offset: Any) -> tuple[tuple[str, str, str], Any]:
    """The names of anchor, positive and candidates, and the in-batch offset (None: the
    positive is separate), of a direction with one positive per row and one candidate block."""
    if d.positive is not None:
        return (d.anchor, d.positive, d.paired or d.shared[0][0]), None
    keys = d.shared[0][0]
    return (d.anchor, _LOCAL[keys], keys), offset


def _problem(
    xp: Namespace,
    config: Config,
    d: Direction,
    units: dict[str, Array],
    labels: dict[str, Array],
    offset: Any,
) -> _cells.Problem:
    """The blocks of a direction as one :class:`_cells.Problem`: shared blocks concatenated, a
    separate own positive as column 0 of the paired block."""
    y: Any = labels.get(LABELS) if config.labelled else None
    parts, part_labels, own, hide, start = [], [], None, None, 0
    for name, role in d.shared:
        block = units[name]
        if role == "own":
            own = offset + start
        elif role == "self":
            hide = offset + start
        parts.append(block)
        part_labels.append(labels.get(_labels_of(name)))
        start += block.shape[0]
    shared = None if not parts else parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
    shared_labels = labelled = None
    if y is not None and any(lab is not None for lab in part_labels):
        filled, flags = [], []
        for block, lab in zip(parts, part_labels):
            rows, where = block.shape[0], device(block)
            filled.append(lab if lab is not None else xp.zeros(rows, dtype=y.dtype, device=where))
            flags.append(xp.full(rows, lab is not None, dtype=xp.bool, device=where))
        shared_labels = filled[0] if len(filled) == 1 else xp.concat(filled, axis=0)
        if any(lab is None for lab in part_labels):
            labelled = xp.concat(flags, axis=0)
    paired = None if d.paired is None else units[d.paired]
    paired_labels = None
    if y is not None and d.paired is not None:
        paired_labels = labels.get(NEGATIVE_LABELS)
    if d.positive is not None:  # the own positive becomes column 0 of the paired block
        own_column = units[d.positive][:, None, :]
        paired = own_column if paired is None else xp.concat([own_column, paired], axis=1)
        if paired_labels is not None:
            paired_labels = xp.concat([y[:, None], paired_labels], axis=1)
    return _cells.Problem(
        units[d.anchor],
        shared,
        paired,
        y,
        shared_labels,
        labelled,
        paired_labels,
        own,
        hide,
        d.positive is not None,
        config.positives,
    )


def _narrow(xp: Namespace, x: Array, dtype: Any) -> Array:
    """Cast to ``dtype``: entries beyond a narrower dtype's range become inf, as the seed's do,
    so that loss scalers see the overflow."""
    return x if x.dtype == dtype else xp.astype(x, dtype)
