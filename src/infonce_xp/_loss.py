"""The public ``info_nce``, ``InfoNCE`` and ``info_nce_value_and_grad``: docs, checks, dispatch."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from . import _engine
from ._arrays import (
    array_namespace,
    as_array,
    device,
    is_array_api_obj,
    is_jax_namespace,
    is_torch_namespace,
)

Array = Any

REDUCTIONS = ("mean", "sum", "none")
NEGATIVE_MODES = ("unpaired", "paired")


class Call(NamedTuple):
    """A checked call: everything the engine and the adapters need."""

    xp: Any
    arrays: dict[str, Array]  # query, positive_key[, negative_keys]
    temperature: Any  # Python float or 0-D array
    config: _engine.Config
    reduction: str
    gather: Any
    out_dtype: Any


class Gradients(NamedTuple):
    """Gradients returned by :func:`info_nce_value_and_grad`; ``None`` where an input is absent
    or a Python number."""

    query: Array
    positive_key: Array
    negative_keys: Array | None
    temperature: Array | None


def _describe(x: Any) -> str:
    if is_array_api_obj(x):
        return (
            f"{type(x).__module__}.{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
        )
    return f"{type(x).__name__} {x!r}"[:120]


def check_options(
    temperature: Any,
    reduction: Any,
    negative_mode: Any,
    symmetric: Any,
    normalize: Any,
    chunk_size: Any,
    gather: Any,
) -> None:
    """Validate the options that are Python values (shared by the function and the classes)."""
    if not is_array_api_obj(temperature):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(
                f"temperature must be a positive number or a 0-D array; got {_describe(temperature)}"
            )
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    if negative_mode not in NEGATIVE_MODES:
        raise ValueError(f"negative_mode must be one of {NEGATIVE_MODES}; got {negative_mode!r}")
    for flag, value in (("symmetric", symmetric), ("normalize", normalize)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False; got {_describe(value)}")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise TypeError(f"chunk_size must be None or an int; got {_describe(chunk_size)}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1; got {chunk_size}")
    if gather is not None and not callable(gather):
        raise TypeError(f"gather must be None or a callable; got {_describe(gather)}")


def check(
    query: Any,
    positive_key: Any,
    negative_keys: Any,
    temperature: Any,
    reduction: Any,
    negative_mode: Any,
    symmetric: Any,
    normalize: Any,
    chunk_size: Any,
    gather: Any,
    xp: Any,
) -> Call:
    """Validate a call from static facts only (shapes, dtypes, Python values)."""
    named = {"query": query, "positive_key": positive_key}
    if negative_keys is not None:
        named["negative_keys"] = negative_keys
    for name, x in named.items():
        if not is_array_api_obj(x):
            raise TypeError(
                f"{name} must be an array (NumPy, torch, JAX, CuPy, ...); got {_describe(x)}"
            )
    temperature_is_array = is_array_api_obj(temperature)
    check_options(temperature, reduction, negative_mode, symmetric, normalize, chunk_size, gather)
    if xp is None:
        everything = named | ({"temperature": temperature} if temperature_is_array else {})
        try:
            xp = array_namespace(*everything.values())
        except TypeError as err:
            kinds = ", ".join(
                f"{n}: {type(x).__module__}.{type(x).__name__}" for n, x in everything.items()
            )
            raise TypeError(
                f"all arrays of one call must come from one array library; got {kinds}"
            ) from err

    for name, x in named.items():
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"{name} must have a real floating dtype; got {x.dtype}")
    expected_ndim = {
        "query": 2,
        "positive_key": 2,
        "negative_keys": 3 if negative_mode == "paired" else 2,
    }
    for name, x in named.items():
        if x.ndim != expected_ndim[name]:
            where = f" with negative_mode={negative_mode!r}" if name == "negative_keys" else ""
            raise ValueError(
                f"{name} must have {expected_ndim[name]} dimensions{where}; got shape {tuple(x.shape)}"
            )
    n, dim = query.shape
    if n == 0 or dim == 0:
        raise ValueError(
            f"query must hold at least one row of at least one feature; got shape {(n, dim)}"
        )
    if positive_key.shape[0] != n:
        raise ValueError(
            f"query and positive_key must have the same number of rows; got {n} and {positive_key.shape[0]}"
        )
    for name, x in named.items():
        if x.shape[-1] != dim:
            raise ValueError(
                f"{name} must have {dim} features, as query does; got shape {tuple(x.shape)}"
            )
    if negative_mode == "paired" and negative_keys is not None and negative_keys.shape[0] != n:
        raise ValueError(
            f"negative_keys must have one row per query ({n}) with negative_mode='paired'; "
            f"got shape {tuple(negative_keys.shape)}"
        )
    if temperature_is_array:
        if not xp.isdtype(temperature.dtype, "real floating"):
            raise TypeError(f"temperature must have a real floating dtype; got {temperature.dtype}")
        if temperature.ndim != 0:
            raise ValueError(
                f"temperature must be a 0-D array; got shape {tuple(temperature.shape)}"
            )
    devices = {name: device(x) for name, x in named.items()}
    if temperature_is_array:
        devices["temperature"] = device(temperature)
    known = {str(d) for d in devices.values() if d is not None}
    if len(known) > 1:
        raise ValueError(f"all arrays of one call must be on one device; got {devices}")
    if symmetric and negative_keys is not None:
        raise ValueError(
            "symmetric=True scores keys against queries in-batch, so it takes no negative_keys; "
            f"got negative_keys of shape {tuple(negative_keys.shape)}"
        )
    mode = "in-batch" if negative_keys is None else negative_mode
    config = _engine.Config(mode, symmetric, normalize, chunk_size)
    out_dtype = xp.result_type(*named.values())
    return Call(xp, named, temperature, config, reduction, gather, out_dtype)


def reduce(call: Call, rows: Array) -> Array:
    """Apply the reduction in the compute dtype, then return the inputs' dtype."""
    xp = call.xp
    if call.reduction == "mean":
        rows = xp.mean(rows)
    elif call.reduction == "sum":
        rows = xp.sum(rows)
    rows = as_array(xp, rows)
    return rows if rows.dtype == call.out_dtype else xp.astype(rows, call.out_dtype)


def evaluate(call: Call) -> Array:
    """The loss of a checked call, through the backend's adapter where it has autograd."""
    if is_torch_namespace(call.xp):
        from . import torch as adapter
    elif is_jax_namespace(call.xp):
        from . import jax as adapter  # type: ignore[no-redef]
    else:
        adapter = None  # type: ignore[assignment]
    if adapter is not None:
        return reduce(call, adapter.loss_rows(call))
    arrays, offset = gathered(call)
    rows, _ = _engine.forward(call.xp, arrays, call.temperature, call.config, offset)
    return reduce(call, rows)


def gathered(call: Call) -> tuple[dict[str, Array], Any]:
    """The call's arrays plus, with ``gather``, every worker's keys; and this worker's offset."""
    arrays = dict(call.arrays)
    if call.gather is None:
        return arrays, 0
    rank = getattr(call.gather, "rank", None)
    if rank is None:
        raise TypeError(
            "gather must also have a rank() method giving this worker's block index, as "
            f"infonce_xp.torch.all_gather and infonce_xp.jax.all_gather do; got {_describe(call.gather)}"
        )
    mode, n = call.config.mode, call.arrays["query"].shape[0]
    if mode == "in-batch":
        arrays[_engine.ALL_KEYS] = call.gather(arrays["positive_key"])
        if call.config.symmetric:
            arrays[_engine.ALL_QUERIES] = call.gather(arrays["query"])
    elif mode == "unpaired":  # the local negatives are used only through the gathered ones
        arrays[_engine.ALL_NEGATIVES] = call.gather(arrays.pop("negative_keys"))
    return arrays, rank() * n


_PARAMETERS = """\
    query : array, shape (N, D)
        Query embeddings, e.g. of one view of each sample.
    positive_key : array, shape (N, D)
        The positive key of each query, e.g. the embedding of another view of the same sample.
    negative_keys : array, shape (M, D) or (N, M, D), optional
        Explicit negatives: shared by all queries (M, D) with ``negative_mode="unpaired"``, or
        M per query (N, M, D) with ``negative_mode="paired"``. If None (the default), the
        negatives of a query are the positive keys of the other queries (in-batch).
    temperature : float or 0-D array, default 0.1
        Logits are divided by the temperature. A 0-D array of the inputs' namespace (a torch
        ``Parameter``, a JAX array) receives a gradient.
    reduction : {"mean", "sum", "none"}, default "mean"
        How the per-query losses are reduced; "none" returns shape (N,).
    negative_mode : {"unpaired", "paired"}, default "unpaired"
        How ``negative_keys`` is read (ignored without them).
    symmetric : bool, default False
        Average the query->key and key->query losses (the CLIP loss); in-batch mode only.
    normalize : bool, default True
        L2-normalise every input row first (cosine similarity). False uses raw dot products.
    chunk_size : int, optional
        Stream the computation over blocks of at most this many queries and keys, forward and
        backward, so that no (N, M) matrix is allocated. None (the default) computes all
        logits at once, which is faster while they fit in memory.
    gather : callable, optional
        Share keys across workers: :func:`infonce_xp.torch.all_gather` or
        :func:`infonce_xp.jax.all_gather`. Each worker's queries are then scored against the
        keys (in-batch positives, unpaired negatives) of every worker.
    xp : array_namespace, optional
        The standard-compatible namespace for the inputs. Default: infer."""


def info_nce(
    query: Array,
    positive_key: Array,
    negative_keys: Array | None = None,
    temperature: float | Array = 0.1,
    reduction: str = "mean",
    negative_mode: str = "unpaired",
    *,
    symmetric: bool = False,
    normalize: bool = True,
    chunk_size: int | None = None,
    gather: Any = None,
    xp: Any = None,
) -> Array:
    call = check(
        query, positive_key, negative_keys, temperature, reduction, negative_mode,
        symmetric, normalize, chunk_size, gather, xp,
    )  # fmt: skip
    return evaluate(call)


info_nce.__doc__ = f"""The InfoNCE loss of queries against their positive keys and negatives.

For query :math:`q_i`, positive :math:`k_i`, candidates :math:`C_i` (the positive and the
negatives) and temperature :math:`t`, with :math:`s` the cosine similarity,

.. math:: \\ell_i = -\\log \\frac{{\\exp(s(q_i, k_i)/t)}}{{\\sum_{{c \\in C_i}} \\exp(s(q_i, c)/t)}}

The same names, order, defaults and numbers as ``info_nce`` of ``info-nce-pytorch`` 0.1.4, for
the arrays of any array-API library; new options are keyword-only.

Parameters
----------
{_PARAMETERS}

Returns
-------
array
    0-D for "mean" and "sum", shape (N,) for "none"; of the inputs' namespace, device and
    (promoted) dtype.

Raises
------
ValueError
    For shapes, ``reduction``, ``negative_mode``, a temperature that is not a finite positive
    number, or a ``chunk_size`` below 1.
TypeError
    For non-arrays, arrays of two libraries, and non-floating dtypes.

Examples
--------
>>> import numpy as np
>>> from infonce_xp import info_nce
>>> rng = np.random.default_rng(0)
>>> query, positive_key = rng.normal(size=(2, 32, 128))
>>> loss = info_nce(query, positive_key)
>>> loss.shape, bool(loss > 0)
((), True)
>>> info_nce(query, positive_key, rng.normal(size=(48, 128)), reduction="none").shape
(32,)
"""


def info_nce_value_and_grad(
    query: Array,
    positive_key: Array,
    negative_keys: Array | None = None,
    temperature: float | Array = 0.1,
    reduction: str = "mean",
    negative_mode: str = "unpaired",
    *,
    grad_output: Array | None = None,
    symmetric: bool = False,
    normalize: bool = True,
    chunk_size: int | None = None,
    gather: Any = None,
    xp: Any = None,
) -> tuple[Array, Gradients]:
    call = check(
        query, positive_key, negative_keys, temperature, reduction, negative_mode,
        symmetric, normalize, chunk_size, gather, xp,
    )  # fmt: skip
    xp = call.xp
    n: int = call.arrays["query"].shape[0]
    out_shape: tuple[int, ...] = (n,) if reduction == "none" else ()
    grad_output_: Any = grad_output
    if grad_output is None:
        grad_output_ = xp.ones(out_shape, dtype=call.out_dtype, device=device(call.arrays["query"]))
    elif not is_array_api_obj(grad_output_) or tuple(grad_output_.shape) != out_shape:
        raise ValueError(
            f"grad_output must be an array of shape {out_shape}; got {_describe(grad_output)}"
        )
    if is_torch_namespace(xp):
        from . import torch as adapter
    elif is_jax_namespace(xp):
        from . import jax as adapter  # type: ignore[no-redef]
    else:
        adapter = None  # type: ignore[assignment]
    if adapter is not None:
        loss, grads = adapter.value_and_grad(call, grad_output_)
    else:
        loss, grads = _value_and_grad(call, grad_output_)
    return loss, Gradients(
        grads["query"], grads["positive_key"], grads.get("negative_keys"), grads.get("temperature")
    )


def _value_and_grad(call: Call, grad_output: Array) -> tuple[Array, dict[str, Array]]:
    """The engine's forward and analytic backward, for backends without autograd."""
    xp = call.xp
    arrays, offset = gathered(call)
    rows, residuals = _engine.forward(xp, arrays, call.temperature, call.config, offset)
    n = rows.shape[0]
    grad_rows = xp.astype(grad_output, rows.dtype)
    if call.reduction == "mean":
        grad_rows = grad_rows / n
    grad_rows = grad_rows * xp.ones_like(rows)
    grads = _engine.backward(xp, residuals, grad_rows, call.temperature, call.config, offset)
    for name, local in (
        (_engine.ALL_KEYS, "positive_key"),
        (_engine.ALL_QUERIES, "query"),
        (_engine.ALL_NEGATIVES, "negative_keys"),
    ):
        if name in grads:
            mine = call.gather.scatter(grads.pop(name))
            grads[local] = mine if local not in grads else grads[local] + mine
    return reduce(call, rows), grads


info_nce_value_and_grad.__doc__ = f"""The InfoNCE loss and its analytic gradient, for any backend.

NumPy and CuPy have no autograd: this returns the gradients of ``sum(grad_output * loss)`` with
respect to every input, computed by the same array-API backward that the torch and JAX adapters
use. On torch and JAX arrays it goes through their autograd and gives the same numbers.

Parameters
----------
{_PARAMETERS.split("    symmetric :")[0]}\
    grad_output : array, optional
        The cotangent of the loss, of its shape (0-D, or (N,) with ``reduction="none"``).
        Default: ones.
    symmetric :{_PARAMETERS.split("    symmetric :")[1]}

Returns
-------
loss : array
    As :func:`info_nce`.
grads : Gradients
    A named tuple ``(query, positive_key, negative_keys, temperature)`` of arrays shaped like
    the inputs; ``negative_keys`` and ``temperature`` are None when absent or a Python number.

Examples
--------
>>> import numpy as np
>>> from infonce_xp import info_nce_value_and_grad
>>> rng = np.random.default_rng(0)
>>> query, positive_key = rng.normal(size=(2, 8, 16))
>>> loss, grads = info_nce_value_and_grad(query, positive_key)
>>> grads.query.shape, grads.negative_keys is None
((8, 16), True)
"""


_CLASS_PARAMETERS = (
    "    temperature :" + _PARAMETERS.split("    temperature :")[1].split("    xp :")[0].rstrip()
)


class InfoNCE:
    __doc__ = f"""The InfoNCE loss as a callable object, for any array library.

A plain class (no backend import); :class:`infonce_xp.torch.InfoNCE` is the
``torch.nn.Module`` with the same constructor.

Parameters
----------
{_CLASS_PARAMETERS}

Examples
--------
>>> import numpy as np
>>> from infonce_xp import InfoNCE
>>> loss_fn = InfoNCE(temperature=0.07)
>>> loss_fn
InfoNCE(temperature=0.07, reduction='mean', negative_mode='unpaired')
>>> rng = np.random.default_rng(0)
>>> float(loss_fn(*rng.normal(size=(2, 32, 128)))) > 0
True
"""

    def __init__(
        self,
        temperature: float | Array = 0.1,
        reduction: str = "mean",
        negative_mode: str = "unpaired",
        *,
        symmetric: bool = False,
        normalize: bool = True,
        chunk_size: int | None = None,
        gather: Any = None,
    ) -> None:
        check_options(
            temperature, reduction, negative_mode, symmetric, normalize, chunk_size, gather
        )
        self.temperature = temperature
        self.reduction = reduction
        self.negative_mode = negative_mode
        self.symmetric = symmetric
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.gather = gather

    def __call__(
        self, query: Array, positive_key: Array, negative_keys: Array | None = None
    ) -> Array:
        return info_nce(query, positive_key, negative_keys, **options(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({describe_options(self)})"


DEFAULTS = {"symmetric": False, "normalize": True, "chunk_size": None, "gather": None}


def options(obj: Any) -> dict[str, Any]:
    """The keyword arguments of ``info_nce`` held by an ``InfoNCE`` object."""
    names = ("temperature", "reduction", "negative_mode", *DEFAULTS)
    return {name: getattr(obj, name) for name in names}


def describe_options(obj: Any, **shown: Any) -> str:
    """The seed's three options always, the new ones where they differ from the default."""
    values = options(obj) | shown
    parts = [f"{k}={v!r}" for k, v in values.items() if k not in DEFAULTS or DEFAULTS[k] != v]
    return ", ".join(parts)
