"""Normalisation of several arrays' rows at once: stacked, normalised, cut back into arrays.

At small sizes a call pays for each operation, not for its arithmetic: normalising the rows of
the query, the keys and the negatives as one stack runs each operation once for all of them.
Large arrays are normalised apart (see :func:`groups`).
"""

from __future__ import annotations

import math
from typing import Any

from . import _core
from ._arrays import split_rows, traits
from ._typing import Array, Namespace

# The largest number of entries that rows stacked for normalisation hold together (see groups)
STACK_LIMIT = 1 << 15

Stacks = tuple[tuple[Array, ...], tuple[Array, ...], dict[str, Array]]


def groups(arrays: dict[str, Array], fusing: bool = False) -> tuple[tuple[str, ...], ...]:
    """The arrays, by name, in the groups whose rows are normalised as one stack.

    Stacking saves each operation's fixed cost, which is what small arrays pay for; large ones
    would pay for the copy instead, and for a working set beyond the caches. So neighbours (in
    the order of ``arrays``) share a stack while it holds at most ``STACK_LIMIT`` entries.
    Where a compiler fuses the operations anyway (``fusing``: XLA, ``torch.compile``), each
    array is its own group.
    Shapes decide, so the forward and the backward find the same groups.
    """
    limit = 0 if fusing else STACK_LIMIT
    out: list[tuple[str, ...]] = []
    group: list[str] = []
    size = 0
    for name, x in arrays.items():
        entries = math.prod(x.shape)
        if group and size + entries > limit:
            out.append(tuple(group))
            group, size = [], 0
        group.append(name)
        size += entries
    return (*out, tuple(group))


def normalise(xp: Namespace, arrays: dict[str, Array]) -> Stacks:
    """The unit rows of each group's stack, the two factors of their lengths per stack (see
    ``_core.normalise``), and the unit rows by name (views)."""
    named = groups(arrays, traits(xp).fusing())
    parts = [_core.normalise(xp, stacked(xp, arrays, group)) for group in named]
    stacks = tuple(units for units, _, _ in parts)
    lengths = tuple(factor for _, length, largest in parts for factor in (length, largest))
    return stacks, lengths, units_of(xp, arrays, stacks)


def units_of(xp: Namespace, arrays: dict[str, Array], stacks: Any) -> dict[str, Array]:
    """Each array's unit rows, cut from the stacks that ``normalise`` returned for it."""
    if len(stacks) == 1:
        return unstacked(xp, stacks[0], arrays)
    units: dict[str, Array] = {}
    for names, stack in zip(groups(arrays, traits(xp).fusing()), stacks):
        units |= unstacked(xp, stack, {k: arrays[k] for k in names})
    return units


def backward(
    xp: Namespace, stacks: Any, lengths: Any, units: dict[str, Array], grads: dict[str, Array]
) -> dict[str, Array]:
    """The gradients through ``normalise`` of the arrays in ``grads`` (each array's ``units``
    and the stacks and lengths as returned)."""
    if len(stacks) == 1:
        return _backward(xp, stacks[0], lengths, units, grads)
    out: dict[str, Array] = {}
    for i, group in enumerate(groups(units, traits(xp).fusing())):
        mine = {k: grads[k] for k in group if k in grads}
        if mine:
            like = {k: units[k] for k in group}
            out |= _backward(xp, stacks[i], lengths[2 * i : 2 * i + 2], like, mine)
    return out


def _backward(
    xp: Namespace, stack: Array, factors: Any, like: dict[str, Array], grads: dict[str, Array]
) -> dict[str, Array]:
    """One stack's: in one pass over the rows of the arrays that have a gradient where these are
    adjacent in the stack, else array by array."""
    length, largest = factors
    if len(grads) == len(like):  # every array: the whole stack
        g = _core.normalise_backward(xp, stack, length, largest, stacked(xp, grads, like))
        return unstacked(xp, g, like)
    spans, start = {}, 0
    for name, x in like.items():
        rows = math.prod(x.shape[:-1])
        spans[name] = start, start + rows
        start += rows
    names = [k for k in like if k in grads]
    first, last = spans[names[0]][0], spans[names[-1]][1]
    if last - first == sum(b - a for a, b in (spans[k] for k in names)):  # one run
        g = stacked(xp, {k: grads[k] for k in names})
        rows = slice(first, last)
        g = _core.normalise_backward(xp, stack[rows, ...], length[rows, ...], largest[rows, ...], g)
        return unstacked(xp, g, {k: like[k] for k in names})
    out = {}
    for name in names:
        a, b = spans[name]
        g = xp.reshape(grads[name], (b - a, -1))
        g = _core.normalise_backward(xp, stack[a:b, ...], length[a:b, ...], largest[a:b, ...], g)
        out[name] = xp.reshape(g, like[name].shape)
    return out


def stacked(xp: Namespace, arrays: dict[str, Array], names: Any = None) -> Array:
    """The rows (last axis) of the arrays ``names`` (default: all), stacked into one (R, D)
    array in that order."""
    picked = arrays.values() if names is None else (arrays[k] for k in names)
    rows = [x if x.ndim == 2 else xp.reshape(x, (-1, x.shape[-1])) for x in picked]
    return rows[0] if len(rows) == 1 else xp.concat(rows, axis=0)


def unstacked(xp: Namespace, stack: Array, like: dict[str, Array]) -> dict[str, Array]:
    """``stack``'s rows back as arrays of the shapes of ``like`` (the inverse of ``stacked``)."""
    if len(like) == 1:
        ((name, x),) = like.items()
        return {name: stack if x.ndim == 2 else xp.reshape(stack, x.shape)}
    parts = split_rows(xp, stack, [math.prod(x.shape[:-1]) for x in like.values()])
    return {
        name: part if x.ndim == 2 else xp.reshape(part, x.shape)
        for (name, x), part in zip(like.items(), parts)
    }
