"""A loss under ``torch.compile``: one opaque call that AOTAutograd traces, not Dynamo.

Dynamo turns every global that the code it traces reads into a guard, and checks every guard
at every call of the compiled function. Traced by Dynamo, a call's checks and plan (several
hundred globals read) cost more per call than the whole compiled graph at small sizes. So the
public entries (``_dispatch.one_call_when_compiled``) hand their arguments to ``nonstrict_trace``
instead: Dynamo guards on the arguments only (tensors, and the Python values it specialises
on), and AOTAutograd traces the same Python (checks, plan, Function) once, into the graph.

Only plain arguments cross: tensors, Python numbers, strings, None, tuples of these, and
:class:`Options` as its values. Anything else (a namespace ``xp``, a ``gather``, an array
temperature inside the options) is traced by Dynamo as before. ``tests/test_compile_guards.py``
pins the private ``torch._dynamo.nonstrict_trace``; without it, every call is traced.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from ._options import OPTION_NAMES, Options

_NONSTRICT = getattr(torch._dynamo, "nonstrict_trace", None)
_OPTIONS = "infonce_xp.Options"  # the tag of an Options' values
_NONE = "infonce_xp.None"  # None, which cannot cross
_SYMBOLIC: dict[type, type] = {torch.SymFloat: float, torch.SymInt: int, torch.SymBool: bool}
_LEAVES = (torch.Tensor, bool, int, float, str)  # bound here: no module read while traced
_FAILED: list[Any] = []  # what the last call's checks raised, for the caller to raise again


def _portable(x: Any) -> Any:
    """``x`` as nonstrict_trace takes it, or ``_PLAIN`` where it cannot cross."""
    if x is None:
        return _NONE
    if isinstance(x, _LEAVES):
        return x
    if isinstance(x, (tuple, list)):
        parts = tuple(_portable(v) for v in x)
        return _PLAIN if any(p is _PLAIN for p in parts) else type(x)(parts)
    if type(x) is Options and x.gather is None:
        values = tuple(_portable(getattr(x, name)) for name in OPTION_NAMES)
        if any(v is _PLAIN for v in values) or isinstance(x.temperature, torch.Tensor):
            return _PLAIN
        return (_OPTIONS, *values)
    return _PLAIN


class _Plain:
    """The mark of an argument that cannot cross."""


_PLAIN = _Plain()


def _restored(x: Any) -> Any:
    """The argument that ``_portable`` made ``x`` of."""
    if isinstance(x, str):
        return None if x == _NONE else x
    if type(x) in _SYMBOLIC:  # a number that Dynamo made symbolic: options are static
        return _SYMBOLIC[type(x)](x)  # (a guard on its value)
    if isinstance(x, (tuple, list)):
        if x and isinstance(x[0], str) and x[0] == _OPTIONS:
            values = dict(zip(OPTION_NAMES, map(_restored, x[1:])))
            t, r, m = (values.pop(name) for name in OPTION_NAMES[:3])
            return Options.of(t, r, m, values)
        return type(x)(map(_restored, x))
    return x


def _entry(name: str) -> Any:
    """The function of a qualified name, ``module:qualname`` (a function cannot cross: it is
    found again by name, as pickle does)."""
    module, _, qualname = name.partition(":")
    found: Any = sys.modules[module]
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _whole(name: str, args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...]) -> Any:
    """The entry ``name`` on the arguments, as AOTAutograd (and Dynamo's fake run) trace it."""
    try:
        return _entry(name)(*_restored(args), **dict(_restored(kwargs)))
    except (TypeError, ValueError) as error:  # raised again by the caller, in Dynamo's view
        _FAILED[:] = [type(error), str(error)]
        return []


_OPAQUE = _NONSTRICT(_whole) if _NONSTRICT is not None else None


def call_whole(fn: Callable[..., Any], name: str, args: Any, kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` while Dynamo traces it: one opaque call where the arguments are
    plain, else traced."""
    # the keywords as pairs: each kind of container crossing is a guard more at every call
    crossing = _portable((args, tuple(kwargs.items())))
    if _OPAQUE is None or crossing is _PLAIN:
        return fn(*args, **kwargs)
    loss = _OPAQUE(name, *crossing)
    if isinstance(loss, list):  # the checks refused the call: raise where Dynamo sees it
        kind, message = _FAILED
        raise kind(message)
    return loss
