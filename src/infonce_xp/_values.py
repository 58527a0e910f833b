"""What a value is, read from the host where that costs nothing: Python and NumPy numbers,
0-D arrays of any library, a compiler's traced numbers."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from ._namespaces import is_torch_tensor, torch_compiling
from ._typing import Array


def is_symbolic_number(x: Any) -> bool:
    """A number that a compiler traces (``torch.compile(dynamic=True)``'s ``SymFloat``)."""
    return type(x).__name__ in ("SymFloat", "SymInt")


def is_numpy_value(x: Any) -> bool:
    """A NumPy scalar or array (a number, not an array, to the other libraries)."""
    numpy = sys.modules.get("numpy")  # not type(x)'s module name, which compilers cannot trace
    if numpy is None:
        return False
    return type(x) is numpy.ndarray or isinstance(x, numpy.generic)  # not a subclass's arrays


def number(x: Array, *, sync: bool) -> float | None:
    """The value of a 0-D array as a Python float, where it can be read; else None.

    Never while traced (``jax.jit``, ``torch.compile``, ``torch.func``); from an accelerator
    only if ``sync`` (a device synchronisation is acceptable).
    """
    if torch_compiling():  # first: a compiler cannot trace the questions below (type names)
        return None
    if is_torch_tensor(x):
        import torch

        if torch._C._are_functorch_transforms_active():
            return None
        if x.device.type == "cpu" and x.dtype != torch.bfloat16:
            # Host memory, read as such: float() dispatches _local_scalar_dense, the op of a
            # synchronising read, which tools that watch for those (and our tests) would count.
            with contextlib.suppress(RuntimeError, TypeError):  # a subclass may refuse
                return float(x.detach().numpy())
        return float(x.detach()) if sync or x.device.type == "cpu" else None
    lib = type(x).__module__.partition(".")[0]
    if lib == "numpy" or lib == "array_api_strict":
        return float(x)
    if lib in ("jax", "jaxlib"):
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
        return float(x) if sync or all(d.platform == "cpu" for d in x.devices()) else None
    return float(x) if sync else None
