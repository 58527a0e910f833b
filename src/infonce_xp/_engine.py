"""The plan of a call: how its loss and gradient are computed, decided once per call signature.

``check_call`` builds a :class:`Plan` from the options and the arrays' static facts (never from
their values). The plan holds the directions with their candidate blocks, the execution that
runs each (the one-positive dense kernel of :mod:`._core`, or the cells of :mod:`._cells`,
dense in :mod:`._dense` or tiled in :mod:`._tiled`), the reduction and its derivative, and the
layout of the residuals. The bridges (torch autograd, JAX ``custom_vjp``, the analytic
default) call :meth:`Plan.forward` and :meth:`Plan.backward` and move arrays; the backward runs
what the forward chose.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _cells, _core, _dense, _ring, _stacks, _tiled
from ._arrays import Scan, as_array, traits
from ._cells import Problem
from ._directions import (
    BIAS,
    NOT_EMBEDDINGS,
    QUERY,
    Config,
    Direction,
    directions,
    gradients,
    problem,
)
from ._lean import Execution, Lean, add, scale_of, temperature_gradient
from ._reduction import Reduction, narrow
from ._typing import Array, Namespace


class Route(NamedTuple):
    """A direction and the execution that computes it: "plain" (:mod:`._core`: one positive
    per row, all logits at once; "fused" is its form for a compiler that fuses element-wise
    work, see ``_core.forward``), "cells" (:mod:`._dense`: the cells of :mod:`._cells`, all
    at once) or "tiled" (:mod:`._tiled`). ``kept``: which fields of the execution's saved
    tuple are arrays. ``names``: a plain route's anchor, positive and candidates."""

    direction: Direction
    kernel: str
    kept: tuple[bool, ...]
    names: tuple[str, str, str] | None = None


_PLAIN = ("plain", "fused")


class _Step(NamedTuple):
    """What every route of one forward or backward reads."""

    xp: Namespace
    units: dict[str, Array]  # the floating arrays as the kernels see them (unit rows)
    arrays: dict[str, Array]  # the raw arrays, labels included
    scale: Any
    offset: Any
    loop: Scan | None  # a tiled route's (None: a Python loop)


class Residuals(NamedTuple):
    """What the backward needs (a pytree of arrays for ``jax.custom_vjp``).

    ``units`` holds the rows of the floating inputs, normalised and stacked by the groups of
    :func:`._stacks.groups`, and ``lengths`` the two factors of their lengths per stack; both
    None without normalisation. ``saved`` holds each route's saved tuple; ``split`` the units
    by name (views of the stacks, which a bridge may keep to spare the backward cutting them).
    """

    inputs: dict[str, Array]
    units: tuple[Array, ...] | None
    lengths: tuple[Array, ...] | None
    saved: tuple[Any, ...]
    split: dict[str, Array] | None = None


class Plan:
    """How one call signature is computed; holds no array. Equal configurations, reductions,
    dtypes and normalisation layouts give equal plans (a plan is a static argument of
    ``jax.custom_vjp``)."""

    __slots__ = (
        "_cast",
        "_kept",
        "_key",
        "_layout",
        "_names",
        "_plain_only",
        "_ring",
        "_sum",
        "config",
        "dtype",
        "execution",
        "out_dtype",
        "reduction",
        "routes",
    )

    def __init__(
        self,
        xp: Namespace,
        config: Config,
        empty: bool,
        reduction: str,
        out_dtype: Any,
        floats: dict[str, Array],
        ring: Any = None,
        weighted: bool = False,
    ) -> None:
        """``empty``: the explicit negatives have no row (tiles then gain nothing);
        ``out_dtype``: the floating inputs' promoted dtype, that of the loss; ``floats``: the
        call's floating arrays by name, whose shapes and dtypes (not values) the plan reads;
        ``ring``: the gather whose ``shift`` passes the keys round (``exchange="ring"``);
        ``weighted``: the call has sample weights."""
        self.config, self.reduction, self.out_dtype = config, reduction, out_dtype
        self._ring = ring
        # the compute dtype: at least float32 (half-precision inputs are upcast for the logits
        # and the log-sum-exp)
        self.dtype = out_dtype if xp.finfo(out_dtype).bits >= 32 else xp.float32
        self._cast = any(x.dtype != self.dtype for x in floats.values())
        # torch.compile: strided writes become passes over every entry (XLA has none anyway)
        fusing = traits(xp).fusing()
        fused = fusing and not traits(xp).lazy
        routes = []
        more = config.target is not None or config.debias is not None  # further statistics
        extra = bool(config.margin) or config.debias is not None  # scale derivatives (dense)
        for d in directions(config):
            names = None if config.cells(d.anchor) else d.one_positive()
            if names and (config.chunk_size is None or (empty and d.anchor == QUERY)):
                kernel = "fused" if fused else "plain"
                routes.append(Route(d, kernel, (True, True, True), names))
            elif config.chunk_size is None and ring is None:
                kept = (bool(d.shared), d.paired is not None, d.positive is not None, True, extra)
                routes.append(Route(d, "cells", kept))
            else:
                kernel = "tiled" if ring is None else "ring"
                routes.append(Route(d, kernel, (True, True, more, True, False)))
        self.routes = tuple(routes)
        self._kept = sum(sum(route.kept) for route in routes)  # arrays the routes keep
        self._plain_only = all(route.kernel in _PLAIN for route in routes)
        plain = tuple(route.kernel in _PLAIN for route in routes)
        self._sum = Reduction(reduction, out_dtype, plain, config.positives == "pairs")
        # The floating arrays' names, sorted (as JAX sorts a dict's keys), and the layout of
        # their normalisation; gathered, other workers' rows join them at each call.
        self._names = self._layout = None
        if not config.gathered:
            self._names = tuple(sorted(floats))
            if config.normalize:
                shapes = {k: tuple(floats[k].shape) for k in self._names}
                self._layout = _stacks.layout(shapes, fusing)
        self.execution: Execution = self._lean(weighted) or self
        kernels = tuple(r.kernel for r in routes)
        shaped = (self._cast, self._names, self._layout)  # what the arrays' facts decided
        self._key = (config, reduction, str(out_dtype), kernels, shaped, ring, weighted)

    def _lean(self, weighted: bool) -> Lean | None:
        """The lean execution (:mod:`._lean`) where every route is the plain kernel and
        nothing else is asked of the call: no cast, sample weights or workers."""
        plain = all(route.kernel == "plain" for route in self.routes)
        if not plain or self._cast or weighted or self._names is None:
            return None
        routes = tuple((*r.names, r.direction.positive is None) for r in self.routes)  # type: ignore[misc]
        return Lean(routes, self._layout, self._sum, self._names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        kernels = ", ".join(f"{r.direction.anchor}: {r.kernel}" for r in self.routes)
        return f"Plan({kernels}; reduction={self.reduction!r})"

    # The rows --------------------------------------------------------------------------------

    def forward(
        self,
        xp: Namespace,
        arrays: dict[str, Array],
        temperature: Any,
        offset: Any = 0,
        scan: Scan | None = None,
    ) -> tuple[Array, Residuals]:
        """The reduced loss in the output dtype, and what the backward needs.

        ``arrays`` maps the names of :mod:`._directions` to raw inputs (labels and gathered
        arrays included); ``offset`` is where this worker's rows start among the gathered
        ones; ``temperature`` is a Python number or a 0-D array.
        """
        units = self._floats(xp, arrays)
        stacks = lengths = None
        if self.config.normalize:
            stacks, lengths, units = _stacks.normalise(xp, units, self._where(xp, units))
        scale = scale_of(xp, temperature, units[QUERY].dtype)
        step = _Step(xp, units, arrays, scale, offset, scan)
        rows: Any = None
        saved = []
        for route in self.routes:
            part, kept = self._forward(step, route)
            rows = part if rows is None else rows + part
            saved.append(kept)
        if len(saved) > 1:
            rows = rows / len(saved)
        counts = self._sum.counts(xp, saved)
        weights = self._sum.weights(xp, arrays, rows)
        if weights is not None:
            rows, counts = rows * weights, weights if counts is None else counts * weights
        loss = self._sum.reduce(xp, rows, counts)
        split = units if stacks is not None else None
        return loss, Residuals(arrays, stacks, lengths, tuple(saved), split)

    def _forward(self, step: _Step, route: Route) -> tuple[Array, Any]:
        """One route's loss rows and its saved tuple."""
        xp, scale = step.xp, step.scale
        if route.kernel in _PLAIN:
            (a, b, c), where = self._plain(step, route)
            return _core.forward(xp, a, b, c, scale, where, route.kernel == "fused")
        p = self._problem(step, route)
        if route.kernel == "cells":
            return _dense.forward(xp, p, scale)
        chunk = self._chunk(p)
        if route.kernel == "ring":
            return _ring.forward(xp, p, scale, chunk, step.loop, self._ring)
        return _tiled.forward(xp, p, scale, chunk, step.loop)

    # The gradient ----------------------------------------------------------------------------

    def backward(
        self,
        xp: Namespace,
        residuals: Residuals,
        grad: Any,
        temperature: Any,
        offset: Any = 0,
        scan: Scan | None = None,
        wanted: Any = None,
    ) -> dict[str, Array]:
        """Gradients of ``sum(grad * loss)`` (``grad`` None: ones): one per floating array name,
        in that array's dtype, and ``"temperature"`` when the temperature is an array.
        Arguments as given to ``forward``; ``wanted``, if given, names the arrays whose
        gradient is returned."""
        units = residuals.split
        if units is None:
            units = self._floats(xp, residuals.inputs)
        where = None if residuals.units is None else self._where(xp, units)
        if residuals.split is None and where is not None:
            units = _stacks.units_of(xp, residuals.units, where)
        anchor = units[QUERY]
        scale = scale_of(xp, temperature, anchor.dtype)
        counts = self._sum.counts(xp, residuals.saved)
        weights = self._sum.weights(xp, residuals.inputs, anchor)
        if weights is not None:
            counts = weights if counts is None else counts * weights
        n = anchor.shape[0]
        grad_rows = self._sum.grad_rows(xp, grad, n, counts, anchor)
        if weights is not None:
            grad_rows = grad_rows * weights
        step = _Step(xp, units, residuals.inputs, scale, offset, scan)
        grads: dict[str, Array] = {}
        grad_scale = grad_bias = None
        # the cells and tiled executions take one gradient per row (a view)
        wide = grad_rows
        if grad_rows.ndim == 0 and not self._plain_only:
            wide = xp.broadcast_to(grad_rows, (n,))
        for route, kept in zip(self.routes, residuals.saved):
            rows = grad_rows if route.kernel in _PLAIN else wide
            parts, g_scale, g_bias = self._backward(step, route, kept, rows, wanted)
            for name, g in parts:
                if g is not None:
                    grads[name] = g if name not in grads else grads[name] + g
            grad_scale, grad_bias = add(grad_scale, g_scale), add(grad_bias, g_bias)
        if wanted is not None:
            grads = {k: g for k, g in grads.items() if k in wanted}
        if where is not None and residuals.lengths is not None and grads:
            grads = _stacks.backward(xp, residuals.units, residuals.lengths, grads, where)
        out = grads
        if self._cast:
            out = {name: narrow(xp, g, residuals.inputs[name].dtype) for name, g in grads.items()}
        if not isinstance(temperature, (int, float)):
            out["temperature"] = temperature_gradient(xp, grad_scale, scale, temperature)
        if grad_bias is not None and (wanted is None or BIAS in wanted):
            out[BIAS] = narrow(xp, as_array(xp, grad_bias), residuals.inputs[BIAS].dtype)
        return out

    def _backward(
        self, step: _Step, route: Route, kept: Any, grad_rows: Array, wanted: Any
    ) -> tuple[list[tuple[str, Any]], Any, Any]:
        """One route's gradients by array name, its scale's and its bias's gradients."""
        xp, scale, d = step.xp, step.scale, route.direction
        if route.kernel in _PLAIN:
            (a, b, c), where = self._plain(step, route)
            where = None if route.kernel == "fused" else where  # see _core.forward
            names = route.names or ("", "", "")
            wants_c = wanted is None or names[2] in wanted
            *parts, g_scale = _core.backward(xp, a, b, c, scale, kept, grad_rows, where, wants_c)
            return list(zip(names, parts)), g_scale, None
        p = self._problem(step, route)
        if route.kernel == "cells":
            g_anchor, blocks, g_scale, g_bias = _dense.backward(xp, p, scale, kept, grad_rows)
        else:
            execution = _tiled.backward if route.kernel == "tiled" else _ring.backward
            more = () if route.kernel == "tiled" else (self._ring,)
            g_anchor, blocks, g_scale, g_bias = execution(  # type: ignore[operator]
                xp, p, scale, self._chunk(p), step.loop, kept, grad_rows, *more
            )
        own = p.positive is not None
        return gradients(xp, d, step.units, g_anchor, blocks, own), g_scale, g_bias

    def _problem(self, step: _Step, route: Route) -> Problem:
        """A cells route's arrays; tiled, its own positives are a column of their own."""
        apart = route.kernel == "tiled"
        d, config = route.direction, self.config
        return problem(step.xp, config, d, step.units, step.arrays, step.offset, apart, step.scale)

    def _chunk(self, p: Problem) -> int:
        """The tile: ``chunk_size``, or (the ring without it) a worker's rows and keys whole."""
        return self.config.chunk_size or p.anchor.shape[0]

    @staticmethod
    def _plain(step: _Step, route: Route) -> tuple[tuple[Array, ...], Any]:
        """Anchor, positive and candidates of a one-positive route, and the in-batch offset of
        the positives among the candidates (None: a separate positive)."""
        a, b, c = route.names or ("", "", "")
        offset = None if route.direction.positive is not None else step.offset
        return (step.units[a], step.units[b], step.units[c]), offset

    def _floats(self, xp: Namespace, arrays: dict[str, Array]) -> dict[str, Array]:
        """The floating arrays of a call (not the labels), in the compute dtype, by name."""
        names = self._names or _float_names(arrays)
        if not self._cast:
            return {k: arrays[k] for k in names}
        dtype = self.dtype
        return {k: x if (x := arrays[k]).dtype == dtype else xp.astype(x, dtype) for k in names}

    def _where(self, xp: Namespace, units: dict[str, Array]) -> _stacks.Layout:
        """The layout of the normalisation: the plan's, or (gathered) the arrays'."""
        if self._layout is not None:
            return self._layout
        return _stacks.layout({k: x.shape for k, x in units.items()}, traits(xp).fusing())

    # The residuals' layout, for a bridge that keeps them as a flat list ------------------------

    def save(self, residuals: Residuals, split: bool) -> list[Array]:
        """The residuals that are not inputs, as a flat list (see :meth:`load`): the stacks of
        units and their lengths, the units by name if ``split``, each route's kept arrays."""
        leaves: list[Array] = []
        if residuals.units is not None and residuals.lengths is not None:
            leaves += [*residuals.units, *residuals.lengths]
            if split:
                leaves += list((residuals.split or {}).values())
        for route, kept in zip(self.routes, residuals.saved):
            leaves += [x for x, there in zip(kept, route.kept) if there]
        return leaves

    def load(self, inputs: dict[str, Array], leaves: Any, split: bool) -> Residuals:
        """The residuals that :meth:`save` flattened, with the inputs they were computed from."""
        units = lengths = by_name = None
        at = 0
        if self.config.normalize:
            floats = self._names or _float_names(inputs)
            # the rest are the stacks, their lengths (two per stack) and the units by name
            n = (len(leaves) - self._kept - (len(floats) if split else 0)) // 3
            units, lengths, at = tuple(leaves[:n]), tuple(leaves[n : 3 * n]), 3 * n
            if split:
                by_name = dict(zip(floats, leaves[at : at + len(floats)]))
                at += len(floats)
        saved = []
        for route in self.routes:
            fields = []
            for there in route.kept:
                fields.append(leaves[at] if there else None)
                at += there
            saved.append((_core.Saved if route.kernel in _PLAIN else _cells.Saved)(*fields))
        return Residuals(inputs, units, lengths, tuple(saved), by_name)


def _float_names(arrays: dict[str, Array]) -> list[str]:
    """The floating arrays' names in the order of the stacked units (sorted: the same after a
    pytree, as JAX sorts a dict's keys)."""
    return [k for k in sorted(arrays) if k not in NOT_EMBEDDINGS]
