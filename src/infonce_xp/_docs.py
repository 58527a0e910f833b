"""The options' docstring fragments, and the decorators that show the options in the public
functions' and classes' docstrings, signatures and attributes."""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

from ._checks import SUPERVISED, SUPERVISED_DEFAULTS
from ._options import FIELDS, KEYWORD_ONLY, OPTION_NAMES

# Docstring fragments, filled into literal docstrings by ``fill_doc`` (SciPy's doccer idea).
FRAGMENTS: dict[str, str] = {
    "query": """\
query : array, shape (N, D)
    Query embeddings, e.g. of one view of each sample.""",
    "positive_key": """\
positive_key : array, shape (N, D)
    The positive key of each query, e.g. the embedding of another view of the same sample.""",
    "negative_keys": """\
negative_keys : array, shape (M, D) or (N, M, D), optional
    Explicit negatives: shared by all queries (M, D) with ``negative_mode="unpaired"``, or
    M per query (N, M, D) with ``negative_mode="paired"``. If None (the default), the
    negatives of a query are the positive keys of the other queries (in-batch).""",
    "labels": """\
labels : array of int, shape (N,), optional
    A class id per row (keyword-only): query ``i`` and key ``i`` carry ``labels[i]``.
    Candidates of a row's class other than its own positive are *same-class*: ignored or
    positives as ``positives`` says.""",
    "negative_labels": """\
negative_labels : array of int, shape (M,) or (N, M), optional
    The class ids of ``negative_keys`` (keyword-only; needs ``labels``). Default: explicit
    negatives are never same-class.""",
    "guide": """\
guide : tuple of arrays, optional
    A guide model's embeddings of the query, positive key (and negative) rows, in that
    order (keyword-only; needs ``guide_margin``): their cosine similarities choose the false
    negatives that ``guide_margin`` hides. They get no gradient; their width may differ.""",
    "teacher": """\
teacher : tuple of arrays, optional
    A teacher model's embeddings of the query, positive key (and negative) rows, in that
    order (keyword-only): each row's target becomes the softmax of the teacher's
    similarities (over the row's kept candidates) divided by ``teacher_temperature``
    (distillation). They get no gradient; their width may differ. Not with ``guide``.""",
    "sample_weight": """\
sample_weight : array, shape (N,), optional
    Each row's weight >= 0 (keyword-only; no gradient): "none" gives ``w_i l_i``, "sum"
    ``sum w_i l_i`` and "mean" ``sum w_i l_i / sum w_i`` (0 when the weights sum to 0).
    Under ``symmetric``, row i's weight weighs query i's and key i's terms; under
    ``gather``, each worker passes its own rows' weights.""",
    "grad_output": """\
grad_output : array, optional
    The cotangent of the loss, of its shape (0-D, or (N,) with ``reduction="none"``).
    Default: ones.""",
    "xp": """\
xp : array_namespace, optional
    The standard-compatible namespace for the inputs. Default: infer.""",
    **{name: f.metadata["doc"] for name, f in FIELDS.items()},
}
FRAGMENTS["arrays"] = "\n".join(FRAGMENTS[n] for n in ("query", "positive_key", "negative_keys"))
FRAGMENTS["labels_both"] = "\n".join(FRAGMENTS[n] for n in ("labels", "negative_labels"))
FRAGMENTS["seed_options"] = "\n".join(FRAGMENTS[n] for n in OPTION_NAMES if n not in KEYWORD_ONLY)
FRAGMENTS["options"] = "\n".join(FRAGMENTS[n] for n in KEYWORD_ONLY)
FRAGMENTS["supervised_options"] = "\n".join(FRAGMENTS[n] for n in SUPERVISED if n != "positives")

_PLACEHOLDER = re.compile(r"^( *)%\((\w+)\)s$", re.MULTILINE)
F = TypeVar("F", bound=Callable[..., Any])


def fill_doc(obj: F) -> F:
    """Replace each line ``%(name)s`` of ``obj``'s docstring by the fragment ``name``, indented
    as the placeholder is."""
    doc = obj.__doc__ or ""
    obj.__doc__ = _PLACEHOLDER.sub(
        lambda m: textwrap.indent(FRAGMENTS[m.group(2)], m.group(1)), doc
    )
    return obj


def with_options(obj: F) -> F:
    """Fill the docstring, and show the keyword-only options in the signature of ``obj``.

    ``obj`` takes them as ``**options``; :func:`inspect.signature` (so ``help()``, Sphinx and
    IPython) lists each by name and default, before any other keyword-only parameter.
    """
    return _show_options(obj, tuple(KEYWORD_ONLY), {})


def with_supervised_options(obj: F) -> F:
    """:func:`with_options` for the single-set form: its options and defaults only."""
    return _show_options(obj, SUPERVISED, SUPERVISED_DEFAULTS)


def _show_options(obj: F, names: tuple[str, ...], defaults: dict[str, Any]) -> F:
    target: Any = obj.__init__ if isinstance(obj, type) else obj  # type: ignore[misc]
    signature = inspect.signature(target)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    at = next((i for i, p in enumerate(params) if p.kind is p.KEYWORD_ONLY), len(params))
    options = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=defaults.get(name, FIELDS[name].default),
            annotation=FIELDS[name].type,
        )
        for name in names
    ]
    target.__signature__ = signature.replace(parameters=params[:at] + options + params[at:])
    return fill_doc(obj)


C = TypeVar("C", bound=type)


def option_attributes(cls: C) -> C:
    """Give a class that holds ``self.options`` one attribute per option (unless it defines
    its own): reading returns the option, assigning replaces ``options`` with a checked copy."""

    def attribute(name: str) -> property:
        def get(self: Any) -> Any:
            return getattr(self.options, name)

        def set_(self: Any, value: Any) -> None:
            self.options = self.options.replace(**{name: value})

        return property(get, set_, doc=f"The ``{name}`` option (see :class:`Options`).")

    for name in OPTION_NAMES:
        if not any(name in k.__dict__ for k in cls.__mro__[:-1]):
            setattr(cls, name, attribute(name))
    return cls
