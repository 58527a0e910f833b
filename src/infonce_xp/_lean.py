"""The lean execution of a plan whose every direction has one positive per row (the seed's
modes, plain or symmetric): the kernels of :mod:`._core` and the stacks of :mod:`._stacks`,
with nothing around them.

At small sizes a call pays for each Python step, not for its arithmetic, so the plan (see
``Plan.execution``) hands such calls here: no per-route dispatch, no residual layout to
decode, and the residuals a flat tuple (the stacks, their length factors, the unit rows by
array, each direction's kept arrays), which a bridge saves as they are. The math is
:mod:`._core`'s, as in the general execution; only the bookkeeping differs.
"""

from __future__ import annotations

from typing import Any, Protocol

from . import _core, _stacks
from ._arrays import as_array, concat_rows, split_rows
from ._reduction import Reduction, narrow
from ._stacks import Layout
from ._typing import Array, Namespace

# A direction: anchor, positive and candidates by name, and whether the positive is among the
# candidates (in-batch, at the anchor's own row: its exps then carry the positive's gradient,
# and the sum over the others is not kept)
Route = tuple[str, str, str, bool]


class Execution(Protocol):
    """What bridges call: :class:`._engine.Plan` itself, or the :class:`Lean` it chose."""

    def forward(
        self, xp: Namespace, arrays: dict[str, Array], temperature: Any, offset: Any = 0,
        scan: Any = None,
    ) -> tuple[Array, Any]: ...  # fmt: skip

    def backward(
        self, xp: Namespace, residuals: Any, grad: Any, temperature: Any, offset: Any = 0,
        scan: Any = None, wanted: Any = None,
    ) -> dict[str, Array]: ...  # fmt: skip

    def save(self, residuals: Any, split: bool) -> list[Array]: ...

    def load(self, inputs: dict[str, Array], leaves: Any, split: bool) -> Any: ...


class Lean:
    """A one-positive plan's execution (no array); its methods have the signatures of the
    :class:`._engine.Plan` methods of the same names, which bridges call."""

    __slots__ = ("_flat", "_names", "_rows", "_stacks", "layout", "reduction", "routes")

    def __init__(self, routes: tuple[Route, ...], layout: Layout | None, reduction: Reduction,
                 names: tuple[str, ...]) -> None:  # fmt: skip
        """``layout``: the groups of the floating arrays normalised as one stack each (see
        :func:`._stacks.layout`; None: no normalisation); ``names``: the floating arrays."""
        self.routes, self.layout, self.reduction = routes, layout, reduction
        groups = layout or ()
        self._names = tuple(name for group in groups for name, _, _ in group) or names
        self._stacks = len(groups)  # residuals: the stacks, then two length factors each
        self._rows = [rows for group in groups for _, _, rows in group]
        # One stack of (N, D) arrays: stacked and cut by C calls, no comprehension (each Python
        # step counts at small sizes)
        self._flat = len(groups) == 1 and all(len(shape) == 2 for _, shape, _ in groups[0])

    def __repr__(self) -> str:
        return f"Lean({', '.join(a for a, _, _, _ in self.routes)}; {self._names})"

    def forward(
        self, xp: Namespace, arrays: dict[str, Array], temperature: Any, *_: Any
    ) -> tuple[Array, tuple[Array, ...]]:
        """The reduced loss and the residuals: the stacks of unit rows, their lengths' two
        factors each and the arrays' unit rows (views: the backward spares cutting the stacks
        again; without normalisation, the arrays themselves), then each direction's kept
        arrays (``exps``, ``others`` unless in-batch, ``partition``)."""
        if self.layout is None:
            kept: tuple[Array, ...] = tuple(map(arrays.__getitem__, self._names))
            units = arrays
        elif self._flat:
            stack, length, largest = _core.normalise(
                xp, concat_rows(xp, list(map(arrays.__getitem__, self._names)))
            )
            kept = (stack, length, largest, *split_rows(xp, stack, self._rows))
            units = dict(zip(self._names, kept[3:]))
        else:
            stacks, lengths, units = _stacks.normalise(xp, arrays, self.layout)
            kept = (*stacks, *lengths, *units.values())
        scale = scale_of(xp, temperature, units[self.routes[0][0]].dtype)
        rows: Any = None
        for a, b, c, in_batch in self.routes:
            part, (exps, others, partition) = _core.forward(
                xp, units[a], units[b], units[c], scale, 0 if in_batch else None
            )
            rows = part if rows is None else rows + part
            kept += (exps, partition) if in_batch else (exps, others, partition)
        if len(self.routes) > 1:
            rows = rows / len(self.routes)
        return self.reduction.reduce(xp, rows, None), kept

    def backward(
        self,
        xp: Namespace,
        residuals: tuple[Array, ...],
        grad: Any,
        temperature: Any,
        *_: Any,
        wanted: Any = None,
    ) -> dict[str, Array]:
        """Gradients of ``sum(grad * loss)`` (``grad`` None: ones) by array name, and
        ``"temperature"`` when it is an array; ``wanted``, if given, names the arrays whose
        gradient is returned."""
        at = 3 * self._stacks
        kept = iter(residuals[at + len(self._names) :])
        units = dict(zip(self._names, residuals[at:]))
        anchor = units[self.routes[0][0]]
        scale = scale_of(xp, temperature, anchor.dtype)
        grad_rows = self.reduction.grad_rows(xp, grad, anchor.shape[0], None, anchor)
        grads: dict[str, Array] = {}
        grad_scale = None
        for a, b, c, in_batch in self.routes:
            exps = next(kept)
            saved = _core.Saved(exps, None if in_batch else next(kept), next(kept))
            wants_c = wanted is None or c in wanted
            *parts, g_scale = _core.backward(
                xp, units[a], units[b], units[c], scale, saved, grad_rows,
                0 if in_batch else None, wants_c,
            )  # fmt: skip
            for name, g in zip((a, b, c), parts):
                if g is not None and (wanted is None or name in wanted):
                    grads[name] = g if name not in grads else grads[name] + g
            grad_scale = add(grad_scale, g_scale)
        if self.layout is not None and grads:
            if self._flat and len(grads) == len(self._names):  # every array: the whole stack
                g = concat_rows(xp, list(map(grads.__getitem__, self._names)))
                stack, length, largest = residuals[:3]
                g = _core.normalise_backward(xp, stack, length, largest, g)
                grads = dict(zip(self._names, split_rows(xp, g, self._rows)))
            else:
                stacks, lengths = residuals[: self._stacks], residuals[self._stacks : at]
                grads = _stacks.backward(xp, stacks, lengths, grads, self.layout)
        if not isinstance(temperature, (int, float)):
            grads["temperature"] = temperature_gradient(xp, grad_scale, scale, temperature)
        return grads

    def save(self, residuals: tuple[Array, ...], split: bool) -> list[Array]:
        """The residuals that are not inputs, as a flat list: without normalisation the
        arrays themselves lead them (a Function may not return its inputs as outputs)."""
        return list(residuals[len(self._names) if self.layout is None else 0 :])

    def load(self, inputs: dict[str, Array], leaves: Any, split: bool) -> tuple[Array, ...]:
        """The residuals that :meth:`save` listed, with the inputs they were computed from."""
        if self.layout is None:
            return (*map(inputs.__getitem__, self._names), *leaves)
        return tuple(leaves)


def add(total: Any, part: Any) -> Any:
    """``total + part``, where either may be None (nothing yet, nothing to add)."""
    return part if total is None else total if part is None else total + part


def scale_of(xp: Namespace, temperature: Any, dtype: Any) -> Any:
    """The inverse temperature: a Python float, or a 0-D array of the compute dtype."""
    if isinstance(temperature, (int, float)):
        return 1.0 / temperature
    return as_array(xp, 1.0 / xp.astype(temperature, dtype))


def temperature_gradient(xp: Namespace, grad_scale: Any, scale: Any, temperature: Any) -> Array:
    """The temperature's gradient from the scale's: d/dt f(1/t) = -f'(s) s^2, in the
    temperature's dtype."""
    return narrow(xp, as_array(xp, -(grad_scale * scale * scale)), temperature.dtype)
