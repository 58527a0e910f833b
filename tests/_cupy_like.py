"""``cupy_like``: a NumPy-backed namespace with CuPy's traits, so that the CPU test matrix runs a
library shaped like CuPy without a GPU.

What it shares with CuPy and no other CPU backend has together: writeable arrays whose
``diagonal()`` is a writeable view, a ``fill`` method (not torch's ``fill_``, no other torch
method), ufuncs with ``out=``, and reductions that return 0-D arrays, not NumPy scalars. Its
functions are array-api-compat's NumPy namespace, with results viewed as :class:`CupyLikeArray`.
It is registered with ``infonce_xp`` as the namespace of its arrays (array-api-compat would call
an ndarray subclass NumPy's).
"""

from __future__ import annotations

import functools
import types
from typing import Any

import array_api_compat.numpy as base
import numpy as np

from infonce_xp._namespaces import register_namespace


class CupyLikeArray(np.ndarray):
    """An ndarray whose ``diagonal()`` is a writeable view, as CuPy's is (NumPy's is read-only)."""

    def diagonal(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Any:
        if (self.ndim, axis1, axis2) != (2, 0, 1):
            return np.ndarray.diagonal(self, offset, axis1, axis2)
        start = self[:, offset:] if offset >= 0 else self[-offset:, :]
        length = max(0, min(start.shape))
        step = self.strides[0] + self.strides[1]
        return np.lib.stride_tricks.as_strided(start, (length,), (step,), writeable=True)

    def __array_namespace__(self, api_version: str | None = None) -> Any:
        return xp


def _wrap(result: Any) -> Any:
    if isinstance(result, CupyLikeArray):
        return result
    if isinstance(result, np.ndarray):
        return result.view(CupyLikeArray)
    if isinstance(result, np.generic):  # CuPy's reductions return 0-D arrays
        return np.asarray(result).view(CupyLikeArray)
    if isinstance(result, (tuple, list)):
        return type(result)(_wrap(r) for r in result)
    return result


def _returning_ours(function: Any) -> Any:
    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return _wrap(function(*args, **kwargs))

    return wrapped


def _namespace(name: str, source: Any) -> types.ModuleType:
    module = types.ModuleType(name)

    def __getattr__(attr: str) -> Any:  # a module's own, as PEP 562 has it
        value = getattr(source, attr)
        if callable(value) and not isinstance(value, type):
            value = _returning_ours(value)
        setattr(module, attr, value)
        return value

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


xp = _namespace("cupy_like", base)
xp.linalg = _namespace("cupy_like.linalg", base.linalg)
register_namespace(CupyLikeArray, xp)
