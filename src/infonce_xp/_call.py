"""One call's arrays checked against its options, planned, and gathered across workers.

Checks read static facts only (shapes, dtypes, namespaces, devices, Python values), so the same
code runs under ``jax.jit`` and ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _directions
from ._arrays import (
    array_namespace,
    device,
    is_array_api_obj,
    library_name,
    result_type,
    torch_compiling,
)
from ._checks import check_bias, check_temperature, describe
from ._data import (
    check_companions,
    check_labels,
    check_references,
    check_weight_values,
    check_weights,
    companions,
)
from ._engine import Plan
from ._namespaces import is_numpy_value
from ._options import Options
from ._typing import Array, Namespace, RingGather

_NDIM = {"query": 2, "positive_key": 2, "key": 2, "embeddings": 2}
_TAGS = (_directions.LABELS, _directions.NEGATIVE_LABELS)  # integer arrays: class ids
_NOT_ROWS = (_directions.SAMPLE_WEIGHT, _directions.BIAS)


class Call(NamedTuple):
    """A checked call: everything the engine and the autograd bridges need."""

    xp: Namespace
    arrays: dict[str, Array]  # query, positive_key[, negative_keys]
    temperature: Any  # Python float or 0-D array
    plan: Plan
    options: Options


# The plans of checked calls by signature (see check_call): static facts only, never an array.
# Bounded: emptied when full. Never stale: the key holds every fact the checks and the plan read
# (the options by value, the namespace, the temperature, each array's name, type, shape, dtype
# and device); what the plan does not decide (an array temperature, whether a gradient is
# wanted) is asked at each call.
_CHECKED: dict[Any, Call] = {}


def check_call(
    options: Options,
    query: Any,
    positive_key: Any = None,
    negative_keys: Any = None,
    labels: Any = None,
    negative_labels: Any = None,
    *,
    temperature: Any = None,
    xp: Namespace | None = None,
    supervised: bool = False,
    guide: Any = None,
    teacher: Any = None,
    sample_weight: Any = None,
    bias: Any = None,
    ring: bool = False,
) -> Call:
    """Check a call's arrays against ``options``, before any computation.

    ``temperature`` overrides ``options.temperature`` (a module's learned one, positive by
    construction, so not read); ``xp`` None infers the namespace from the arrays.
    ``supervised``: one set of rows, ``query`` (named ``embeddings`` in errors), and its labels.
    ``guide`` (or ``teacher``): a guide's (a teacher's) embeddings of the query, positive key
    (and negatives) rows; ``sample_weight``: the rows' weights. ``bias`` (not None): the
    sigmoid loss of ``query`` against ``positive_key`` (named ``key`` in errors), with that bias;
    ``ring``: its keys passed round the workers by ``options.gather`` (``exchange="ring"``).

    The checks read static facts only, so a call whose facts (the ``options`` object, and the
    name, type, shape, dtype and device of each array) passed before is not checked again: its
    checked form is reused with the new arrays. Not while torch compiles (the compiler traces
    the checks instead), nor with an array temperature, which is read at every call.
    """
    # by the engine's names, which are the arguments' (the single set's rows are its queries)
    given = {_directions.QUERY: query}
    if not supervised:
        given[_directions.KEY] = positive_key
    for name, x in (
        (_directions.NEGATIVES, negative_keys),
        (_directions.LABELS, labels),
        (_directions.NEGATIVE_LABELS, negative_labels),
    ):
        if x is not None:
            given[name] = x
    more, role = companions(guide, teacher, negative_keys is not None)
    given |= more
    if sample_weight is not None:
        given[_directions.SAMPLE_WEIGHT] = sample_weight
    if bias is not None and is_array_api_obj(bias):
        given[_directions.BIAS] = bias
    key: Any = None
    t = options.temperature if temperature is None else temperature
    # a NumPy bias may become a number (see _check_call): checked at every call
    numpy_bias = bias is not None and is_numpy_value(bias)
    if type(t) in (float, int) and not numpy_bias and not torch_compiling():
        key = (options, xp, supervised, t, bias if _directions.BIAS not in given else None, ring)
        try:
            for name, x in given.items():
                key += (name, type(x), x.shape, x.dtype, x.device)
            found = _CHECKED.get(key)
        except Exception:  # not an array, a traced one, or facts that do not hash: check
            key = found = None
        if found is not None:
            if sample_weight is not None:  # values, read at every call
                check_weight_values(found.xp, sample_weight)
            if bias is not None and _directions.BIAS in given:
                check_bias(bias)
            return Call(found.xp, given, found.temperature, found.plan, found.options)
    call = _check_call(options, given, temperature, xp, supervised, role, bias, ring)
    if key is not None:
        if len(_CHECKED) >= 64:
            _CHECKED.clear()
        _CHECKED[key] = call._replace(arrays={})
    return call


def _check_call(
    options: Options,
    given: dict[str, Any],
    temperature: Any,
    xp: Namespace | None,
    supervised: bool,
    role: str = "",
    bias: Any = None,
    ring: bool = False,
) -> Call:
    """The checks of ``check_call``, of the arrays by name as a ``Call`` holds them."""
    first = "embeddings" if supervised else "query"
    if supervised:
        check_references(given)
    shown = {
        _directions.QUERY: first,
        _directions.KEY: "key" if bias is not None else "positive_key",
    }
    named = {
        shown.get(k, k): x
        for k, x in given.items()
        if k not in _TAGS and k not in _directions.GUIDE_NAMES and k not in _NOT_ROWS
    }
    if supervised and _directions.LABELS not in given:
        raise TypeError("labels must be an array of integer class ids, one per row; got None")
    tags = {k: x for k, x in given.items() if k in _TAGS}
    guides = {k: x for k, x in given.items() if k in _directions.GUIDE_NAMES}
    weights = {k: x for k, x in given.items() if k == _directions.SAMPLE_WEIGHT}
    negative_keys = given.get(_directions.NEGATIVES)
    for name, x in [*named.items(), *tags.items(), *guides.items(), *weights.items()]:
        if not is_array_api_obj(x):
            kind = "integer class ids" if name in tags else "(NumPy, torch, JAX, CuPy, ...)"
            raise TypeError(f"{name} must be an array {kind}; got {describe(x)}")
    overridden = temperature is not None
    if not overridden:
        temperature = options.temperature
    if is_numpy_value(temperature) and not all(is_numpy_value(x) for x in named.values()):
        temperature = float(temperature)  # a NumPy number is a number to the other libraries
    if bias is not None:
        bias = check_bias(bias)
        if is_numpy_value(bias) and not all(is_numpy_value(x) for x in named.values()):
            bias = float(bias)  # a NumPy number is a number to the other libraries
        given.pop(_directions.BIAS, None)
        if not isinstance(bias, float):
            given[_directions.BIAS] = bias
    t_array = is_array_api_obj(temperature)
    by_role = {k.replace("guide_", f"{role}_", 1): x for k, x in guides.items()}  # by its role
    everything = named | tags | by_role | weights
    everything |= {"temperature": temperature} if t_array else {}
    everything |= {"bias": bias} if _directions.BIAS in given else {}
    if xp is not None and not callable(getattr(xp, "asarray", None)):
        raise TypeError(f"xp must be an array namespace (a module) or None; got {describe(xp)}")
    kinds = ", ".join(
        f"{n}: {type(x).__module__}.{type(x).__name__}" for n, x in everything.items()
    )
    try:
        inferred = array_namespace(*everything.values())
    except TypeError as err:
        raise TypeError(
            f"all arrays of one call must come from one array library; got {kinds}"
        ) from err
    if xp is not None and library_name(xp) != library_name(inferred):
        raise TypeError(
            f"xp must be the namespace of the arrays ({inferred.__name__}) or None; got "
            f"xp={xp.__name__} with {kinds}"
        )
    # The arrays' own namespace: a library's module given as xp (``xp=torch``) lacks the
    # standard's functions that array-api-compat's wrapper of it has.
    xp = inferred
    if t_array and not overridden:
        # A class's Options checked it once, but an array may have changed since; a function's
        # Options left it to this check. Read it where that costs no device sync (a number
        # cannot change).
        check_temperature(temperature, sync=False)
    mode = options.negative_mode
    _check_arrays(xp, named, mode)
    devices = [device(x) for x in everything.values()]
    known = next((d for d in devices if d is not None), None)
    # str() only where the objects differ (it costs more than the comparison)
    if any(d is not None and d != known and str(d) != str(known) for d in devices):
        shown = dict(zip(everything, devices))
        raise ValueError(f"all arrays of one call must be on one device; got {shown}")
    in_batch = options.in_batch_negatives
    if in_batch is None or supervised:
        in_batch = negative_keys is None and not supervised
    if in_batch is False and negative_keys is None and not supervised:
        raise ValueError(
            "in_batch_negatives=False leaves a query only its positive: it needs negative_keys"
        )
    if options.symmetric and negative_keys is not None and not in_batch:
        raise ValueError(
            "symmetric=True scores keys against queries in-batch; with negative_keys it needs "
            "in_batch_negatives=True (the negatives then score the query direction only); got "
            f"negative_keys of shape {tuple(negative_keys.shape)} and "
            f"in_batch_negatives={options.in_batch_negatives!r}"
        )
    check_labels(xp, named, tags, mode)
    check_companions(xp, options, named | guides, role)
    for w in weights.values():
        check_weights(xp, w, named[first].shape[0], first)
        check_weight_values(xp, w)
    hardness = None
    if options.hardness_mode is not None and options.hardness_strength > 0:
        hardness = (options.hardness_mode, float(options.hardness_strength))
        needs_own = options.hardness_mode == "hard_negatives" and mode != "paired"
        if needs_own and negative_keys is not None:
            raise ValueError(
                "hardness_mode='hard_negatives' weighs each row's own negatives: it needs "
                "negative_mode='paired' (with share_negatives=True to share them); got "
                f"unpaired negative_keys of shape {tuple(negative_keys.shape)}"
            )
    guided = target = debias = None
    if options.label_smoothing or role == "teacher":
        teacher = 1.0 / options.teacher_temperature if role == "teacher" else None
        target = (float(options.label_smoothing), teacher)
    if options.debiased_prior or options.hardness_beta:
        debias = (float(options.debiased_prior), float(options.hardness_beta))
    if options.guide_margin is not None:
        guided = (float(options.guide_margin), options.guide_strategy, bool(guides))
    config = _directions.Config(
        "in-batch" if negative_keys is None else mode,
        options.symmetric and not supervised,
        options.normalize,
        options.chunk_size,
        options.positives,
        in_batch,
        options.same_view_negatives or (supervised and negative_keys is None),
        "labels" in tags,
        supervised,
        options.gather is not None,
        options.share_negatives and mode == "paired" and negative_keys is not None,
        hardness,
        options.decoupled,
        options.decoupled_sigma,
        () if supervised else options.joint_directions,
        guided,
        target,
        float(options.margin),
        debias,
        bias is not None,
        bias if isinstance(bias, float) else None,
    )
    if bias is not None:  # SigLIP: every key a candidate, the own one and same-class ones positive
        config = config._replace(
            mode="in-batch", symmetric=False, positives="supcon", in_batch=True
        )
    if ring:
        _check_ring(options.gather)
        config = config._replace(gathered=False, ring=True)
    empty = negative_keys is not None and negative_keys.shape[-2] == 0
    floats = {k: x for k, x in given.items() if k not in _directions.NOT_EMBEDDINGS}
    out_dtype = result_type(xp, *named.values())
    ring_gather = options.gather if ring else None
    weighted = _directions.SAMPLE_WEIGHT in given
    plan = Plan(xp, config, empty, options.reduction, out_dtype, floats, ring_gather, weighted)
    return Call(xp, given, temperature, plan, options)


def _check_ring(gather: Any) -> None:
    """``exchange="ring"`` needs a gather that can pass arrays round the workers."""
    if not isinstance(gather, RingGather):
        raise TypeError(
            'exchange="ring" passes the keys round the workers through gather, which must be '
            "infonce_xp.torch.all_gather() or infonce_xp.jax.all_gather(axis_name) (an object "
            f"with shift(x) and size() methods); got gather={describe(gather)}"
        )


def _check_arrays(xp: Namespace, named: dict[str, Array], mode: str) -> None:
    for name, x in named.items():
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"{name} must have a real floating dtype; got {x.dtype}")
        expected = _NDIM.get(name, 3 if mode == "paired" else 2)
        if x.ndim != expected:
            where = f" with negative_mode={mode!r}" if name == "negative_keys" else ""
            raise ValueError(
                f"{name} must have {expected} dimensions{where}; got shape {tuple(x.shape)}"
            )
    first = next(iter(named))
    n, dim = named[first].shape
    if n == 0 or dim == 0:
        raise ValueError(
            f"{first} must hold at least one row of at least one feature; got shape {(n, dim)}"
        )
    second = next((k for k in ("positive_key", "key") if k in named), None)
    if second is not None and named[second].shape[0] != n:
        raise ValueError(
            f"query and {second} must have the same number of rows; "
            f"got {n} and {named[second].shape[0]}"
        )
    for name, x in named.items():
        if x.shape[-1] != dim:
            raise ValueError(
                f"{name} must have {dim} features, as {first} does; got shape {tuple(x.shape)}"
            )
    negatives = named.get("negative_keys")
    if mode == "paired" and negatives is not None and negatives.shape[0] != n:
        raise ValueError(
            f"negative_keys must have one row per query ({n}) with negative_mode='paired'; "
            f"got shape {tuple(negatives.shape)}"
        )


def gathered(call: Call) -> tuple[dict[str, Array], Any]:
    """The call's arrays plus, with ``gather``, every worker's candidates (keys, queries,
    unpaired negatives) and their labels; and this worker's row offset among them."""
    gather = call.options.gather
    if gather is None or call.plan.config.ring:  # the ring passes the keys itself
        return call.arrays, 0
    arrays = dict(call.arrays)
    config, n = call.plan.config, call.arrays[_directions.QUERY].shape[0]
    pairs = []
    if config.in_batch or "key_to_key" in config.joint:
        pairs.append((_directions.ALL_KEYS, "positive_key"))
    if config.symmetric or config.same_view or "key_to_query" in config.joint:
        pairs.append((_directions.ALL_QUERIES, _directions.QUERY))
    if pairs and config.labelled:
        pairs.append((_directions.ALL_LABELS, "labels"))
    guides = _directions.GUIDE_OF
    pairs += [(guides[a], guides[b]) for a, b in pairs if guides.get(b) in arrays]
    for everyone, mine in pairs:
        arrays[everyone] = _gather(gather, arrays[mine], mine)
    if config.mode == "unpaired" or config.share:  # used only through the gathered ones
        for everyone, mine in (
            (_directions.ALL_NEGATIVES, "negative_keys"),
            (_directions.ALL_NEGATIVE_LABELS, "negative_labels"),
            (guides[_directions.ALL_NEGATIVES], guides[_directions.NEGATIVES]),
        ):
            if mine in arrays:
                arrays[everyone] = _gather(gather, arrays.pop(mine), mine)
    return arrays, gather.rank() * n


def _gather(gather: Any, x: Array, name: str) -> Array:
    """``gather(x)``, checked: whole copies of ``x`` stacked along axis 0 (one per worker)."""
    out = gather(x)
    rows = x.shape[0]
    if (
        not is_array_api_obj(out)
        or tuple(out.shape[1:]) != tuple(x.shape[1:])
        or (rows and out.shape[0] % rows)
        or out.shape[0] < rows
    ):
        raise ValueError(
            f"gather must return {name} of every worker stacked along axis 0: shape (W * {rows}, "
            f"{', '.join(map(str, x.shape[1:]))}) for W workers; got {describe(out)}"
        )
    return out


def check_grad_output(call: Call, grad_output: Any, shape: tuple[int, ...]) -> None:
    """``grad_output`` must be a real floating array of the call's library, device and loss shape."""
    expected = f"an array of shape {shape} and a real floating dtype, of the inputs' library"
    if not is_array_api_obj(grad_output):
        raise TypeError(f"grad_output must be {expected}; got {describe(grad_output)}")
    try:
        array_namespace(grad_output, *call.arrays.values())
    except TypeError:
        raise TypeError(f"grad_output must be {expected}; got {describe(grad_output)}") from None
    if not call.xp.isdtype(grad_output.dtype, "real floating"):
        raise TypeError(f"grad_output must be {expected}; got {describe(grad_output)}")
    if tuple(grad_output.shape) != shape:
        raise ValueError(f"grad_output must be {expected}; got {describe(grad_output)}")
    there, here = device(grad_output), device(call.arrays["query"])
    if there is not None and here is not None and str(there) != str(here):
        raise ValueError(f"grad_output must be on the inputs' device {here}; got {there}")
