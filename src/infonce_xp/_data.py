"""The arrays of a call beside its embeddings, checked: labels, a single set's references, a
guide's or a teacher's embeddings, sample weights. Static facts only (shapes, dtypes), except
the weights' sign, read where that costs no device synchronisation."""

from __future__ import annotations

from typing import Any

from . import _directions
from ._arrays import is_array_api_obj
from ._checks import describe
from ._namespaces import number, torch_compiling
from ._typing import Array, Namespace


def check_references(given: dict[str, Any]) -> None:
    """The single set's reference rows (``negative_keys`` inside): 2-D, with one label each."""
    refs, ref_labels = given.get(_directions.NEGATIVES), given.get(_directions.NEGATIVE_LABELS)
    if (refs is None) != (ref_labels is None):
        raise ValueError(
            "references and reference_labels go together (the positives of a row are the "
            f"references of its class); got references={describe(refs)} and "
            f"reference_labels={describe(ref_labels)}"
        )
    if refs is None or ref_labels is None:
        return
    x = given[_directions.QUERY]
    if not (is_array_api_obj(refs) and refs.ndim == 2 and refs.shape[1:] == x.shape[1:]):
        raise ValueError(
            f"references must have shape (M, {x.shape[-1]}), rows like the embeddings'; got "
            f"{describe(refs)}"
        )
    if not (is_array_api_obj(ref_labels) and tuple(ref_labels.shape) == (refs.shape[0],)):
        raise ValueError(
            f"reference_labels must have shape ({refs.shape[0]},), one id per reference; got "
            f"{describe(ref_labels)}"
        )


def companions(guide: Any, teacher: Any, negatives: bool) -> tuple[dict[str, Any], str]:
    """A guide's or a teacher's arrays by name (one per input array, in the inputs' order:
    both share the guide's names) and which of the two they are ("" with neither)."""
    if guide is not None and teacher is not None:
        raise ValueError(
            "guide= (false-negative masking) and teacher= (soft targets) cannot be given "
            "together: one model's embeddings beside the inputs per call"
        )
    role, given = ("guide", guide) if teacher is None else ("teacher", teacher)
    if given is None:
        return {}, ""
    names = [_directions.QUERY, _directions.KEY] + ([_directions.NEGATIVES] if negatives else [])
    if not isinstance(given, (tuple, list)) or len(given) != len(names):
        raise TypeError(
            f"{role} must be a tuple of {len(names)} arrays, the {role}'s embeddings of "
            f"{', '.join(names)}; got {describe(given)}"
        )
    return {_directions.GUIDE_OF[name]: x for name, x in zip(names, given)}, role


def check_companions(xp: Namespace, options: Any, named: dict[str, Array], role: str) -> None:
    """The guide's or teacher's arrays: floating, one row per row of the array each goes with,
    one width; and the option that reads them."""
    arrays = {k: x for k, x in named.items() if k in _directions.GUIDE_NAMES}
    if role == "guide" and options.guide_margin is None:
        raise ValueError("guide= gives the similarities of guide_margin: it needs guide_margin")
    if role == "teacher" and options.guide_margin is not None:
        raise ValueError(
            "teacher= gives soft targets; guide_margin masks by a guide= model's similarities "
            "(or the model's own): they cannot combine"
        )
    if role == "teacher" and options.positives == "pairs":
        raise ValueError(
            "teacher= gives each row one target distribution: it cannot combine with "
            "positives='pairs' (a loss per positive pair)"
        )
    if role == "teacher" and (options.debiased_prior or options.hardness_beta):
        raise ValueError(
            "teacher= gives soft targets: it cannot combine with debiased_prior or hardness_beta"
        )
    if role == "teacher" and options.decoupled is not False:
        raise ValueError("teacher= gives soft targets: it cannot combine with decoupled")
    widths = set()
    for name, x in arrays.items():
        mine = name.removeprefix("guide_")
        shown, goes_with = f"{role}_{mine}", named[mine]
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"{shown} must have a real floating dtype; got {x.dtype}")
        if x.ndim != goes_with.ndim or tuple(x.shape[:-1]) != tuple(goes_with.shape[:-1]):
            raise ValueError(
                f"{shown} must have the rows of {mine}: shape "
                f"{(*goes_with.shape[:-1], 'D_' + role)}; got {tuple(x.shape)}"
            )
        widths.add(x.shape[-1])
    if len(widths) > 1:
        raise ValueError(f"the {role}'s arrays must share one width; got {sorted(widths)}")


def check_weights(xp: Namespace, w: Array, n: int, first: str) -> None:
    """Sample weights: a real array of shape (N,) (its values: :func:`check_weight_values`)."""
    if not (xp.isdtype(w.dtype, "real floating") or xp.isdtype(w.dtype, "integral")):
        raise TypeError(f"sample_weight must have a real dtype; got {describe(w)}")
    if tuple(w.shape) != (n,):
        raise ValueError(
            f"sample_weight must have shape ({n},), one weight per row of {first}; got "
            f"{describe(w)}"
        )


def check_weight_values(xp: Namespace, w: Array) -> None:
    """Sample weights must be >= 0 (and not NaN): read where that costs no device sync, never
    while traced (as the temperature is)."""
    if w.shape[0] == 0 or torch_compiling():
        return
    least = number(xp.min(w), sync=False)
    if least is not None and not least >= 0:
        raise ValueError(f"sample_weight must be >= 0 (not NaN); got a least weight of {least!r}")


def check_labels(xp: Namespace, named: dict[str, Array], tags: dict[str, Array], mode: str) -> None:
    """Labels: integer arrays of one id per row, and per negative (shared or per row)."""
    first = next(iter(named))
    n = named[first].shape[0]
    negatives: Any = named.get("negative_keys")
    if "negative_labels" in tags:
        if "labels" not in tags:
            raise ValueError(
                "negative_labels are compared with the labels of the queries: they need labels"
            )
        if negatives is None:
            raise ValueError("negative_labels label the negative_keys: they need negative_keys")
    for name, x in tags.items():
        if not (xp.isdtype(x.dtype, "integral")):
            raise TypeError(f"{name} must have an integer dtype; got {x.dtype}")
    if len(tags) == 2:  # compared with each other: they need a common integer dtype
        a, b = tags["labels"].dtype, tags["negative_labels"].dtype
        try:
            common = xp.result_type(a, b)
        except (TypeError, ValueError, RuntimeError):
            common = None
        if common is None or not xp.isdtype(common, "integral"):
            raise TypeError(
                "labels and negative_labels must have integer dtypes with a common integer "
                f"type, as the ids are compared; got {a} and {b} (e.g. int64 for both)"
            )
    for name, x in tags.items():
        if name == "labels":
            expected: tuple[int, ...] = (n,)
        else:
            expected = tuple(negatives.shape[:-1])  # (M,) or (N, M)
        if tuple(x.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected}, one id per "
                f"{'row of ' + first if name == 'labels' else 'negative'}; got {tuple(x.shape)}"
            )
