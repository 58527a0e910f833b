"""One call's arrays checked against its options, gathered across workers, and reduced.

Checks read static facts only (shapes, dtypes, namespaces, devices, Python values), so the same
code runs under ``jax.jit`` and ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _engine
from ._arrays import array_namespace, as_array, device, is_array_api_obj, is_numpy_value
from ._options import Options, check_temperature, describe
from ._typing import Array, Namespace

_NDIM = {"query": 2, "positive_key": 2}


class Call(NamedTuple):
    """A checked call: everything the engine and the autograd bridges need."""

    xp: Namespace
    arrays: dict[str, Array]  # query, positive_key[, negative_keys]
    temperature: Any  # Python float or 0-D array
    config: _engine.Config
    options: Options
    out_dtype: Any


def check_call(
    options: Options,
    *,
    query: Any,
    positive_key: Any,
    negative_keys: Any = None,
    temperature: Any = None,
    xp: Namespace | None = None,
) -> Call:
    """Check a call's arrays against ``options``, before any computation.

    ``temperature`` overrides ``options.temperature`` (a module's learned one, positive by
    construction, so not read); ``xp`` None infers the namespace from the arrays.
    """
    named = {"query": query, "positive_key": positive_key}
    if negative_keys is not None:
        named["negative_keys"] = negative_keys
    for name, x in named.items():
        if not is_array_api_obj(x):
            raise TypeError(
                f"{name} must be an array (NumPy, torch, JAX, CuPy, ...); got {describe(x)}"
            )
    overridden = temperature is not None
    if not overridden:
        temperature = options.temperature
    if is_numpy_value(temperature) and not all(is_numpy_value(x) for x in named.values()):
        temperature = float(temperature)  # a NumPy number is a number to the other libraries
    t_array = is_array_api_obj(temperature)
    everything = named | ({"temperature": temperature} if t_array else {})
    if xp is None:
        try:
            xp = array_namespace(*everything.values())
        except TypeError as err:
            kinds = ", ".join(
                f"{n}: {type(x).__module__}.{type(x).__name__}" for n, x in everything.items()
            )
            raise TypeError(
                f"all arrays of one call must come from one array library; got {kinds}"
            ) from err
    elif not callable(getattr(xp, "asarray", None)):
        raise TypeError(f"xp must be an array namespace (a module) or None; got {describe(xp)}")
    if t_array and not overridden:
        # A class's Options checked it once, but an array may have changed since; a function's
        # Options left it to this check. Read it where that costs no device sync (a number
        # cannot change).
        check_temperature(temperature, sync=False)
    mode = options.negative_mode
    _check_arrays(xp, named, mode)
    devices = [device(x) for x in everything.values()]
    first = next((d for d in devices if d is not None), None)
    # str() only where the objects differ (it costs more than the comparison)
    if any(d is not None and d != first and str(d) != str(first) for d in devices):
        shown = dict(zip(everything, devices))
        raise ValueError(f"all arrays of one call must be on one device; got {shown}")
    if options.symmetric and negative_keys is not None:
        raise ValueError(
            "symmetric=True scores keys against queries in-batch, so it takes no negative_keys; "
            f"got negative_keys of shape {tuple(negative_keys.shape)}"
        )
    config = _engine.Config(
        "in-batch" if negative_keys is None else mode,
        options.symmetric,
        options.normalize,
        options.chunk_size,
    )
    out_dtype = xp.result_type(*named.values())
    return Call(xp, named, temperature, config, options, out_dtype)


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
    query, positive_key = named["query"], named["positive_key"]
    n, dim = query.shape
    if n == 0 or dim == 0:
        raise ValueError(
            f"query must hold at least one row of at least one feature; got shape {(n, dim)}"
        )
    if positive_key.shape[0] != n:
        raise ValueError(
            "query and positive_key must have the same number of rows; "
            f"got {n} and {positive_key.shape[0]}"
        )
    for name, x in named.items():
        if x.shape[-1] != dim:
            raise ValueError(
                f"{name} must have {dim} features, as query does; got shape {tuple(x.shape)}"
            )
    negatives = named.get("negative_keys")
    if mode == "paired" and negatives is not None and negatives.shape[0] != n:
        raise ValueError(
            f"negative_keys must have one row per query ({n}) with negative_mode='paired'; "
            f"got shape {tuple(negatives.shape)}"
        )


def gathered(call: Call) -> tuple[dict[str, Array], Any]:
    """The call's arrays plus, with ``gather``, every worker's keys; and this worker's offset."""
    arrays = dict(call.arrays)
    gather = call.options.gather
    if gather is None:
        return arrays, 0
    mode, n = call.config.mode, call.arrays["query"].shape[0]
    if mode == "in-batch":
        arrays[_engine.ALL_KEYS] = _gather(gather, arrays["positive_key"], "positive_key")
        if call.config.symmetric:
            arrays[_engine.ALL_QUERIES] = _gather(gather, arrays["query"], "query")
    elif mode == "unpaired":  # the local negatives are used only through the gathered ones
        local = arrays.pop("negative_keys")
        arrays[_engine.ALL_NEGATIVES] = _gather(gather, local, "negative_keys")
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


def reduce(call: Call, rows: Array) -> Array:
    """Apply the reduction in the compute dtype, then return the inputs' dtype."""
    xp = call.xp
    if call.options.reduction == "mean":
        rows = as_array(xp, xp.mean(rows))
    elif call.options.reduction == "sum":
        rows = as_array(xp, xp.sum(rows))
    return rows if rows.dtype == call.out_dtype else xp.astype(rows, call.out_dtype)


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
