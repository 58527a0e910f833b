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


def check_bias(b: Any) -> Any:
    """The sigmoid loss's bias: a finite real number (returned as a float), or a 0-D real
    floating array (returned as it is; its value, read where that costs no device
    synchronisation, must be finite)."""
    if is_symbolic_number(b):
        return b
    if b is None or isinstance(b, bool) or not (isinstance(b, (int, float)) or is_array_api_obj(b)):
        raise TypeError(f"bias must be a real number or a 0-D array; got {describe(b)}")
    value: Any = b
    if is_array_api_obj(b):
        if not array_namespace(b).isdtype(b.dtype, "real floating"):
            raise TypeError(f"bias must have a real floating dtype; got {describe(b)}")
        if b.ndim != 0:
            raise ValueError(f"bias must be a 0-D array (one number); got {describe(b)}")
        value = number(b, sync=False)
    if value is not None and not -math.inf < value < math.inf:
        raise ValueError(f"bias must be finite; got {describe(b)}")
    return b if is_array_api_obj(b) else float(b)


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


def check_rows(self: Any, joints: Any, hardness_modes: Any, decoupled: Any) -> None:
    """The options of how a row's cells are scored, of an ``Options`` (issue order: joint
    directions, shared negatives, hardness, decoupling, targets)."""
    joint = self.joint_directions
    if isinstance(joint, str) or not isinstance(joint, (tuple, list)):
        raise TypeError(f"joint_directions must be a tuple of {joints}; got {describe(joint)}")
    if not set(joint) <= set(joints) or len(set(joint)) != len(joint):
        raise ValueError(f"joint_directions must hold distinct names among {joints}; got {joint!r}")
    object.__setattr__(self, "joint_directions", tuple(sorted(joint)))
    if joint and self.symmetric:
        raise ValueError(
            "joint_directions joins the key's cells to its query's row; symmetric=True "
            "gives each direction a row of its own: choose one"
        )
    if self.share_negatives and self.negative_mode != "paired":
        raise ValueError(
            "share_negatives shares each row's own negatives with every query: it needs "
            f"negative_mode='paired'; got negative_mode={self.negative_mode!r}"
        )
    margin = self.guide_margin
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise TypeError(f"guide_margin must be None or a number; got {describe(margin)}")
        check_number("guide_margin", abs(margin), positive=False)
    check_choice("guide_strategy", self.guide_strategy, ("absolute", "relative"))
    check_choice("hardness_mode", self.hardness_mode, hardness_modes)
    check_number("hardness_strength", self.hardness_strength, positive=False)
    check_choice("decoupled", self.decoupled, decoupled)
    if self.decoupled_sigma is not None:
        check_number("decoupled_sigma", self.decoupled_sigma, positive=True)
        if self.decoupled is False:
            raise ValueError(
                "decoupled_sigma weights the positive term of the decoupled loss: it needs "
                f"decoupled=True or 'blocks'; got decoupled={self.decoupled!r}"
            )
    if self.decoupled is not False and self.positives != "own":
        raise ValueError(
            "decoupled leaves each row's own positive out of its denominator: it needs "
            f"positives='own'; got positives={self.positives!r}"
        )
    _check_targets(self)


def _check_targets(self: Any) -> None:
    """Soft targets, margin and the debiased estimator: values, and what they combine with."""
    e = self.label_smoothing
    if isinstance(e, bool) or not isinstance(e, (int, float)):
        raise TypeError(f"label_smoothing must be a number in [0, 1); got {describe(e)}")
    if not 0 <= e < 1:
        raise ValueError(f"label_smoothing must be in [0, 1); got {e!r}")
    check_number("teacher_temperature", self.teacher_temperature, positive=True)
    margin = self.margin
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(f"margin must be a number; got {describe(margin)}")
    check_number("margin", abs(margin), positive=False)
    tau = self.debiased_prior
    check_number("debiased_prior", tau, positive=False)
    if tau >= 1:
        raise ValueError(f"debiased_prior must be in [0, 1); got {tau!r}")
    check_number("hardness_beta", self.hardness_beta, positive=False)
    if e and self.positives == "pairs":
        raise ValueError(
            "label_smoothing spreads one target over a row: it cannot combine with "
            "positives='pairs' (a loss per positive pair); got label_smoothing="
            f"{e!r}"
        )
    if tau or self.hardness_beta:
        debiased = f"debiased_prior={tau!r}, hardness_beta={self.hardness_beta!r}"
        if self.positives != "own":
            raise ValueError(
                "the debiased estimator scores one positive per row: debiased_prior and "
                f"hardness_beta need positives='own'; got positives={self.positives!r} with "
                + debiased
            )
        if e or self.decoupled is not False:
            raise ValueError(
                "the debiased estimator replaces the negatives' sum of the one-hot loss: it "
                "cannot combine with label_smoothing or decoupled; got "
                f"{debiased}, label_smoothing={e!r}, decoupled={self.decoupled!r}"
            )
    if e and self.decoupled is not False:
        raise ValueError(
            "decoupled drops the positive from the denominator; it cannot combine with "
            f"label_smoothing; got label_smoothing={e!r}, decoupled={self.decoupled!r}"
        )


# The options of the single-set (supervised) form, and the defaults it changes.
SUPERVISED = ("positives", "normalize", "chunk_size", "gather", "label_smoothing", "margin")
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
