"""The backends under test: what each needs to run here, and ``Backend``, one of them on a device.

``conftest.py`` builds the ``backend`` fixture and applies the ``backends`` marker from here;
``test_docs.py`` applies the same rule to the code blocks of the documentation.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

# name: (module, device platform); the order is the order of the ``backend`` parametrisation
BACKENDS = {
    "numpy": ("numpy", None),
    "array_api_strict": ("array_api_strict", None),
    "torch": ("torch", "cpu"),
    "jax": ("jax", "cpu"),
    # NumPy-backed, with CuPy's traits (tests/_cupy_like.py): CuPy's code paths without a GPU
    "cupy_like": ("_cupy_like", None),
    "cupy": ("cupy", "cuda"),
    "torch-cuda": ("torch", "cuda"),
    "jax-gpu": ("jax", "gpu"),
}
ALL_BACKENDS = tuple(BACKENDS)
# the backends that use a library, for tests that name the library rather than a device
OF_LIBRARY = {"torch": ("torch", "torch-cuda"), "jax": ("jax", "jax-gpu"), "cupy": ("cupy",)}


@functools.cache
def unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run here (not installed, no device), or None."""
    module, platform = BACKENDS[name]
    try:
        lib = importlib.import_module(module)
    except ImportError:
        return f"{name}: {module} is not installed"
    if name == "torch-cuda" and not lib.cuda.is_available():
        return "torch-cuda needs a CUDA device"
    if name in ("jax", "jax-gpu"):
        try:
            lib.devices(platform)
        except RuntimeError:
            return f"{name} needs a {platform.upper()} device"
    if name == "cupy":
        try:
            available = lib.cuda.is_available()
        except Exception:  # CuPy imports without CUDA but fails at first use
            available = False
        if not available:
            return "CuPy needs a CUDA device"
    return None


def why_skip(chosen: str, names: Iterable[str]) -> str | None:
    """The rule of ``@pytest.mark.backends(*names)`` under ``--backend=chosen``.

    With ``--backend=NAME`` a test runs only if NAME is one of its backends; with ``all``, if any
    of them can run here. The reason names why not: not selected, not installed, no device.
    """
    names = tuple(names)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown} in a backends marker; known: {ALL_BACKENDS}")
    if chosen != "all":
        if chosen not in names:
            return f"not selected: runs with --backend={' or '.join(names)} or all, not {chosen}"
        names = (chosen,)
    reasons = [unavailable(n) for n in names]
    if all(reasons):
        return "; ".join(r for r in reasons if r)
    return None


def dtype_name(x: Any) -> str:
    """``float32``, ``bfloat16``, ...: the dtype of an array of any of our backends."""
    return str(x.dtype).rsplit(".", 1)[-1]


@dataclass
class Backend:
    """One array library on one device, with conversions to and from NumPy."""

    name: str
    xp: Any
    device: Any = None

    @property
    def float64(self) -> bool:
        return True

    @property
    def host_readable(self) -> bool:
        """Whether infonce_xp reads a 0-D array's value at a call (it does where that costs no
        device synchronisation: host memory of a library it knows; cupy_like stands for CuPy)."""
        return self.name in ("numpy", "array_api_strict", "torch", "jax")

    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        x = np.asarray(x)
        dtype_name = dtype or str(x.dtype)
        if self.name in ("torch", "torch-cuda"):
            import torch

            return torch.asarray(
                x.astype(np.float32) if dtype_name == "bfloat16" else x, device=self.device
            ).to(getattr(torch, dtype_name))
        if dtype_name == "float16" and self.name == "array_api_strict":
            pytest.skip("array_api_strict has no float16 (the standard does not define it)")
        if dtype_name == "bfloat16":
            if self.name.startswith("jax"):
                import jax.numpy as jnp

                return jnp.asarray(x.astype(np.float32), dtype=jnp.bfloat16)
            pytest.skip(f"{self.name} has no bfloat16")
        return (
            self.xp.asarray(x.astype(dtype_name), device=self.device)
            if self.device is not None
            else self.xp.asarray(x.astype(dtype_name))
        )

    def asarrays(self, *xs: Any, dtype: str | None = None) -> list[Any]:
        """Each NumPy array as an array of this backend (in ``dtype`` if given); None stays None."""
        return [None if x is None else self.asarray(x, dtype) for x in xs]

    def to_numpy(self, x: Any) -> np.ndarray:
        if self.name in ("torch", "torch-cuda"):
            return (
                x.detach().cpu().float().numpy()
                if str(x.dtype) == "torch.bfloat16"
                else x.detach().cpu().numpy()
            )
        if self.name == "cupy":
            return x.get()
        if self.name == "array_api_strict":
            return np.asarray(x._array)
        if self.name == "cupy_like":
            return np.asarray(x).view(np.ndarray)
        if str(x.dtype) == "bfloat16":
            return np.asarray(x.astype("float32"))
        return np.asarray(x)

    def check_array(self, x: Any, what: str = "actual") -> None:
        """``x`` is an array of this backend's namespace, on its device."""
        from array_api_compat import device

        from infonce_xp._namespaces import array_namespace  # knows the registered cupy_like

        try:
            namespace = array_namespace(x)
        except TypeError:
            namespace = None
        assert namespace is self.xp, (
            f"{what}: an array of {self.xp.__name__} was expected, got {type(x).__name__}"
            f" (namespace {getattr(namespace, '__name__', None)})"
        )
        expected = self.device if self.device is not None else device(self.xp.asarray(0.0))
        if self.name in ("torch", "torch-cuda"):
            import torch

            expected = torch.device(expected)
        assert device(x) == expected, f"{what}: on device {device(x)}, expected {expected}"

    def assert_close(
        self,
        actual: Any,
        desired: Any,
        *,
        rtol: float = 1e-7,
        atol: float = 0.0,
        dtype: str | None = None,
        err_msg: str = "",
    ) -> None:
        """Namespace, device, dtype and shape, then values, as SciPy's ``xp_assert_close``.

        ``actual`` must be an array of this backend on its device. ``desired`` is either one too
        (then namespace, device, dtype and shape must all agree) or a NumPy reference, whose
        shape ``actual`` must have and whose dtype too unless ``dtype`` names another (a float64
        reference for a float32 result). Values are then compared in float64 on the host with
        ``np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol)``.
        """
        self.check_array(actual)
        prefix = f"{err_msg}: " if err_msg else ""
        if isinstance(desired, (np.ndarray, np.generic, float, int)):
            desired = np.asarray(desired)
            want_dtype = dtype or desired.dtype.name
        else:
            self.check_array(desired, "desired")
            want_dtype = dtype or dtype_name(desired)
            desired = self.to_numpy(desired)
        assert dtype_name(actual) == want_dtype, (
            f"{prefix}dtype {dtype_name(actual)}, expected {want_dtype}"
        )
        assert tuple(actual.shape) == desired.shape, (
            f"{prefix}shape {tuple(actual.shape)}, expected {desired.shape}"
        )
        np.testing.assert_allclose(
            self.to_numpy(actual).astype(np.float64),
            desired.astype(np.float64),
            rtol=rtol,
            atol=atol,
            err_msg=err_msg,
        )


def make_backend(name: str) -> Backend:
    """The backend ``name``, or a pytest skip saying why it cannot run here."""
    reason = unavailable(name)
    if reason is not None:
        pytest.skip(reason)
    module, platform = BACKENDS[name]
    lib = importlib.import_module(module)
    if name == "numpy":
        import array_api_compat.numpy as xp

        return Backend(name, xp)
    if name == "array_api_strict":
        return Backend(name, lib)
    if name in ("torch", "torch-cuda"):
        import array_api_compat.torch as xp

        return Backend(name, xp, platform)
    if name in ("jax", "jax-gpu"):
        lib.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return Backend(name, jnp, lib.devices(platform)[0])
    if name == "cupy":
        return Backend(name, lib)
    if name == "cupy_like":
        return Backend(name, lib.xp)
    raise ValueError(name)
