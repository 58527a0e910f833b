"""The checks of values that users pass, and how a wrong one is described in the error."""

from __future__ import annotations

import math
from typing import Any

from ._arrays import array_namespace, is_array_api_obj
from ._namespaces import is_symbolic_number, number


def describe(x: Any) -> str:
    """What a user passed, for error messages: an array's type, shape and dtype, or the value."""
    if is_array_api_obj(x):
        kind = f"{type(x).__module__}.{type(x).__name__}"
        return f"{kind} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:120]


def check_temperature(t: Any, *, sync: bool) -> None:
    """A temperature must be a finite number > 0, or a 0-D real floating array whose value, where
    it can be read (:func:`~infonce_xp._namespaces.number`), is one."""
    if is_symbolic_number(t):  # traced by a compiler: nothing to read
        return
    value: Any = t
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        if not is_array_api_obj(t):
            raise TypeError(
                f"temperature must be a positive number or a 0-D array; got {describe(t)}"
            )
        array: Any = t
        if not array_namespace(array).isdtype(array.dtype, "real floating"):
            raise TypeError(f"temperature must have a real floating dtype; got {describe(t)}")
        if array.ndim != 0:
            raise ValueError(f"temperature must be a 0-D array; got {describe(t)}")
        value = number(array, sync=sync)
    # Comparisons only (a compiler can trace them); NaN fails both.
    too_big = isinstance(value, int) and value >= 2**1024  # beyond float's range
    if not (value is None or (0 < value < math.inf and not too_big)):
        shown = describe(t) if value is t else f"{value!r} ({describe(t)})"
        raise ValueError(f"temperature must be a finite number > 0; got {shown}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """``value`` must be one of ``choices`` (and of its type: ``1`` is not ``True``)."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {choices}; got {describe(value)}")


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {describe(value)}")


def check_number(name: str, value: Any, *, positive: bool) -> None:
    """A finite real number, > 0 (``positive``) or >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {describe(value)}")
    if not (0 < value < math.inf if positive else 0 <= value < math.inf):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")


# The options of the single-set (supervised) form, and the defaults it changes.
SUPERVISED = ("positives", "normalize", "chunk_size", "gather")
SUPERVISED_DEFAULTS = {"positives": "supcon"}


def check_supervised_options(options: dict[str, Any]) -> dict[str, Any]:
    """The keyword options of the single-set form, with its defaults, checked for names and
    for a ``positives`` it supports."""
    unknown = options.keys() - set(SUPERVISED)
    if unknown:
        raise TypeError(
            f"unexpected keyword argument {sorted(unknown)[0]!r}; "
            f"the keyword-only options are {', '.join(SUPERVISED)}"
        )
    options = SUPERVISED_DEFAULTS | options
    if options["positives"] not in ("supcon", "pairs"):
        raise ValueError(
            "positives must be 'supcon' or 'pairs' for one set of rows (there is no own "
            f"positive); got {options['positives']!r}"
        )
    return options
