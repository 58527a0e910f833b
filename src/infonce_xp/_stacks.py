"""Normalisation of several arrays' rows at once: stacked, normalised, cut back into arrays.

At small sizes a call pays for each operation, not for its arithmetic: normalising the rows of
the query, the keys and the negatives as one stack runs each operation once for all of them.
Large arrays are normalised apart (see :func:`layout`). The plan finds the layout once per
call signature, from the arrays' shapes.
"""

from __future__ import annotations

import math
from typing import Any

from . import _core
from ._arrays import concat_rows, split_rows
from ._typing import Array, Namespace

# The largest number of entries that rows stacked for normalisation hold together (see layout)
STACK_LIMIT = 1 << 15

# The arrays normalised as one stack, each as (name, shape, rows), and their stacks in order
Group = tuple[tuple[str, tuple[int, ...], int], ...]
Layout = tuple[Group, ...]
Stacks = tuple[tuple[Array, ...], tuple[Array, ...], dict[str, Array]]


def layout(shapes: dict[str, tuple[int, ...]], fusing: bool = False) -> Layout:
    """The arrays, by name and shape, in the groups whose rows are normalised as one stack.

    Stacking saves each operation's fixed cost, which is what small arrays pay for; large ones
    would pay for the copy instead, and for a working set beyond the caches. So neighbours (in
    the order of ``shapes``) of one width share a stack while it holds at most
    ``STACK_LIMIT`` entries.
    Where a compiler fuses the operations anyway (``fusing``: XLA, ``torch.compile``), each
    array is its own group.
    """
    limit = 0 if fusing else STACK_LIMIT
    out: list[Group] = []
    group: list[tuple[str, tuple[int, ...], int]] = []
    size = 0
    for name, shape in shapes.items():
        shape = tuple(shape)
        entries, rows = math.prod(shape), math.prod(shape[:-1])
        if group and (size + entries > limit or shape[-1] != group[-1][1][-1]):
            out.append(tuple(group))
            group, size = [], 0
        group.append((name, shape, rows))
        size += entries
    return (*out, tuple(group))


def normalise(xp: Namespace, arrays: dict[str, Array], where: Layout) -> Stacks:
    """The unit rows of each group's stack, the two factors of their lengths per stack (see
    ``_core.normalise``), and the unit rows by name (views)."""
    if len(where) == 1:  # one stack: spared the lists (small calls pay for each step)
        units, length, largest = _core.normalise(xp, stacked(xp, arrays, where[0]))
        return (units,), (length, largest), unstacked(xp, units, where[0])
    parts = [_core.normalise(xp, stacked(xp, arrays, group)) for group in where]
    stacks = tuple(units for units, _, _ in parts)
    lengths = tuple(factor for _, length, largest in parts for factor in (length, largest))
    return stacks, lengths, units_of(xp, stacks, where)


def units_of(xp: Namespace, stacks: Any, where: Layout) -> dict[str, Array]:
    """Each array's unit rows, cut from the stacks that ``normalise`` returned for it."""
    if len(stacks) == 1:
        return unstacked(xp, stacks[0], where[0])
    units: dict[str, Array] = {}
    for group, stack in zip(where, stacks):
        units |= unstacked(xp, stack, group)
    return units


def backward(
    xp: Namespace, stacks: Any, lengths: Any, grads: dict[str, Array], where: Layout
) -> dict[str, Array]:
    """The gradients through ``normalise`` of the arrays in ``grads`` (the stacks and lengths
    as returned)."""
    if len(where) == 1 and len(grads) == len(where[0]):  # one stack, every array
        return _whole(xp, stacks[0], lengths, where[0], grads)
    out: dict[str, Array] = {}
    for i, group in enumerate(where):
        if any(name in grads for name, _, _ in group):
            out |= _backward(xp, stacks[i], lengths[2 * i : 2 * i + 2], group, grads)
    return out


def _backward(
    xp: Namespace, stack: Array, factors: Any, group: Group, grads: dict[str, Array]
) -> dict[str, Array]:
    """One stack's: in one pass over the rows of the arrays that have a gradient where these are
    adjacent in the stack, else array by array."""
    length, largest = factors
    mine = tuple(entry for entry in group if entry[0] in grads)
    if len(mine) == len(group):  # every array: the whole stack
        return _whole(xp, stack, factors, group, grads)
    spans, start = {}, 0
    for name, _, rows in group:
        spans[name] = start, start + rows
        start += rows
    first, last = spans[mine[0][0]][0], spans[mine[-1][0]][1]
    if last - first == sum(rows for _, _, rows in mine):  # one run
        run = slice(first, last)
        g = stacked(xp, grads, mine)
        g = _core.normalise_backward(xp, stack[run, ...], length[run, ...], largest[run, ...], g)
        return unstacked(xp, g, mine)
    out = {}
    for name, shape, _ in mine:
        a, b = spans[name]
        g = xp.reshape(grads[name], (b - a, -1))
        g = _core.normalise_backward(xp, stack[a:b, ...], length[a:b, ...], largest[a:b, ...], g)
        out[name] = xp.reshape(g, shape)
    return out


def _whole(
    xp: Namespace, stack: Array, factors: Any, group: Group, grads: dict[str, Array]
) -> dict[str, Array]:
    """The gradients of every array of one stack, in one pass."""
    length, largest = factors
    g = _core.normalise_backward(xp, stack, length, largest, stacked(xp, grads, group))
    return unstacked(xp, g, group)


def stacked(xp: Namespace, arrays: dict[str, Array], group: Group) -> Array:
    """The rows (last axis) of the arrays of ``group``, stacked into one (R, D) array in that
    order."""
    rows = [
        arrays[name] if len(shape) == 2 else xp.reshape(arrays[name], (rows, shape[-1]))
        for name, shape, rows in group
    ]
    return rows[0] if len(rows) == 1 else concat_rows(xp, rows)


def unstacked(xp: Namespace, stack: Array, group: Group) -> dict[str, Array]:
    """``stack``'s rows back as the arrays of ``group`` (the inverse of ``stacked``)."""
    if len(group) == 1:
        ((name, shape, _),) = group
        return {name: stack if len(shape) == 2 else xp.reshape(stack, shape)}
    parts = split_rows(xp, stack, [rows for _, _, rows in group])
    return {
        name: part if len(shape) == 2 else xp.reshape(part, shape)
        for (name, shape, _), part in zip(group, parts)
    }
