"""Which library an array or a namespace belongs to (array-api-compat's answers, kept by type),
and what a value is, read from the host where that costs nothing: Python and NumPy numbers,
0-D arrays of any library, a compiler's traced numbers.

array-api-compat's type tests are ``lru_cache``'d, which ``torch.compile`` warns about at every
trace (and a process whose first call is compiled would trace them); their answers depend only
on the arrays' types, so they are kept here, by type. Torch tensors (``Parameter`` and other
subclasses included) are told by ``isinstance``, which a compiler traces, without compat.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import array_api_compat

from ._typing import Array, Namespace

_IS_ARRAY: dict[type, bool] = {}
_NAMESPACES: dict[tuple[type, ...], Namespace] = {}


def is_torch_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (of any subclass), without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_array_api_obj(x: Any) -> bool:
    """Whether ``x`` is an array of some array-API library (NumPy scalars count)."""
    # Python numbers first: a compiler's traced number has no attributes to ask about.
    if isinstance(x, (int, float)):
        return False
    if is_torch_tensor(x):
        return True
    kind = type(x)
    if kind not in _IS_ARRAY:
        _IS_ARRAY[kind] = bool(array_api_compat.is_array_api_obj(x))
    return _IS_ARRAY[kind]


def array_namespace(*xs: Array) -> Namespace:
    """The namespace of arrays of one library (``array_api_compat.array_namespace``); a
    TypeError for arrays of several."""
    kinds = tuple(type(x) for x in xs)
    found = _NAMESPACES.get(kinds)
    if found is None:
        if all(is_torch_tensor(x) for x in xs):
            import array_api_compat.torch as found  # what compat gives, without its caches
        elif any(kind in _REGISTERED for kind in kinds):
            spaces = {_REGISTERED.get(kind) for kind in kinds}
            if len(spaces) != 1 or None in spaces:
                raise TypeError(f"Multiple namespaces for array inputs: {kinds}")
            found = spaces.pop()
        else:
            found = array_api_compat.array_namespace(*xs)
        _NAMESPACES[kinds] = found
    return found


_REGISTERED: dict[type, Namespace] = {}


def register_namespace(kind: type, namespace: Namespace) -> None:
    """Make ``namespace`` the namespace of arrays of type ``kind``: an array library that
    array-api-compat does not know, or takes for another (an ndarray subclass is NumPy to it).
    The tests register a NumPy-backed namespace with CuPy's traits this way."""
    _REGISTERED[kind] = namespace
    _IS_ARRAY[kind] = True
    _NAMESPACES.clear()


def result_type(xp: Namespace, *arrays: Array) -> Any:
    """``xp.result_type`` of arrays, without asking when they share one dtype (most calls)."""
    dtypes = {x.dtype for x in arrays}
    return dtypes.pop() if len(dtypes) == 1 else xp.result_type(*arrays)


def device(x: Array) -> Any:
    """The device of ``x``; None for a JAX array under ``jax.jit``."""
    if is_torch_tensor(x):
        return x.device  # what compat returns, without its cached type tests (compile warns)
    return array_api_compat.device(x)


# The libraries with an autograd bridge, by the names of their namespaces (the library's own
# and array-api-compat's wrapper): compat's namespace tests are lru_cache'd (see above).
_BRIDGED = {
    "torch": "torch",
    "array_api_compat.torch": "torch",
    "jax.numpy": "jax",
    "jax.experimental.array_api": "jax",
}


def library(xp: Namespace) -> str | None:
    """``"torch"`` or ``"jax"`` for the libraries with their own autograd bridge, else None."""
    return _BRIDGED.get(getattr(xp, "__name__", ""))


def library_name(xp: Namespace) -> str:
    """The library behind a namespace, whether its own or array-api-compat's wrapper of it
    (``"numpy"`` for ``numpy`` and ``array_api_compat.numpy``, ``"jax"`` for ``jax.numpy``)."""
    name = str(getattr(xp, "__name__", ""))
    return name.removeprefix("array_api_compat.").partition(".")[0]


def in_torch_func() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jacrev) runs the caller. torch has no
    public question for it: the private one where this torch has it
    (``tests/test_plan.py`` pins that the torch we test with does), else "yes", which only
    costs speed (no writes in place, no host read of a temperature)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return bool(getattr(torch._C, "_are_functorch_transforms_active", _yes)())


def _yes() -> bool:
    return True


def torch_compiling() -> bool:
    """Whether torch is compiling (tracing) the caller, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def dynamo_tracing() -> bool:
    """Whether torch's Dynamo traces the caller (not AOTAutograd, not eager), without
    importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_dynamo_compiling()


class Now(NamedTuple):
    """torch's answers for right now (see ``Traits``): the primitives ask them at every
    operation, so each is one call, its functions bound once (no module lookups)."""

    compiling: Callable[[], bool]
    not_compiling: Callable[[], bool]
    transforms: Callable[[], bool]
    overwrite: Callable[[Any], bool]


def torch_now() -> Now:
    """torch's :class:`Now`, bound to the torch this process imported (``traits`` asks once)."""
    import torch

    compiler = torch.compiler  # looked up at each call: tests (and tools) replace it

    def compiling() -> bool:
        return compiler.is_compiling()

    # torch has no public question for torch.func's transforms: the private one where this
    # torch has it (tests/test_plan.py pins that ours does), else "yes" (see in_torch_func)
    active = getattr(torch._C, "_are_functorch_transforms_active", _yes)

    def not_compiling() -> bool:
        return not compiler.is_compiling()

    def transforms() -> bool:
        # the C check first: it is the common answer, and the cheaper one; the compiler makes
        # its own choice
        return bool(active()) and not compiler.is_compiling()

    def overwrite(x: Any) -> bool:
        # A tensor on an autograd tape may be saved by the op that made it, and torch.func's
        # transforms (vmap, grad, jacrev) cannot always write in place: never write over those.
        return not x.requires_grad and not (active() and not compiler.is_compiling())

    return Now(compiling, not_compiling, transforms, overwrite)


# Values -----------------------------------------------------------------------------------


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

        if in_torch_func():
            return None
        if x.device.type == "cpu" and x.dtype != torch.bfloat16:
            # Host memory, read as such: float() dispatches _local_scalar_dense, the op of a
            # synchronising read, which tools that watch for those (and our tests) would count.
            with contextlib.suppress(RuntimeError, TypeError):  # a subclass may refuse
                return float(x.detach().numpy())
        return float(x.detach()) if sync or x.device.type == "cpu" else None
    lib = library_name(array_namespace(x))
    if lib in ("numpy", "array_api_strict"):
        return float(x)
    if lib == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
        return float(x) if sync or all(d.platform == "cpu" for d in x.devices()) else None
    return float(x) if sync else None
