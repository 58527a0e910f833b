"""Backends under test, Hypothesis profiles and shared helpers.

``pytest --backend=NAME`` (what each nox ``tests`` session passes) runs the backend-parametrised
tests on that backend only; without it, on every installed one. A backend that is not installed,
or has no device, is skipped with its reason.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=25, deadline=None)
settings.register_profile(
    "ci", max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy", "torch-cuda", "jax-gpu")


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--backend",
        default="all",
        choices=("all", *ALL_BACKENDS),
        help="run backend-parametrised tests on this backend only (default: all installed)",
    )


@dataclass
class Backend:
    """One array library on one device, with conversions to and from NumPy."""

    name: str
    xp: Any
    device: Any = None

    @property
    def float64(self) -> bool:
        return True

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
        if str(x.dtype) == "bfloat16":
            return np.asarray(x.astype("float32"))
        return np.asarray(x)


def make_backend(name: str) -> Backend:
    """The backend ``name``, or a pytest skip saying why it cannot run here."""
    module = {"torch-cuda": "torch", "jax-gpu": "jax", "array_api_strict": "array_api_strict"}.get(
        name, name
    )
    try:
        lib = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{name}: {module} is not installed")
    if name == "numpy":
        import array_api_compat.numpy as xp

        return Backend(name, xp)
    if name == "array_api_strict":
        return Backend(name, lib)
    if name in ("torch", "torch-cuda"):
        import array_api_compat.torch as xp

        if name == "torch-cuda" and not lib.cuda.is_available():
            pytest.skip("torch-cuda needs a CUDA device")
        return Backend(name, xp, "cuda" if name == "torch-cuda" else "cpu")
    if name in ("jax", "jax-gpu"):
        lib.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        platform = "gpu" if name == "jax-gpu" else "cpu"
        try:
            dev = lib.devices(platform)[0]
        except RuntimeError:
            pytest.skip(f"{name} needs a {platform.upper()} device")
        return Backend(name, jnp, dev)
    if name == "cupy":
        try:
            available = lib.cuda.is_available()
        except Exception:  # CuPy imports without CUDA but fails at first use
            available = False
        if not available:
            pytest.skip("CuPy needs a CUDA device")
        return Backend(name, lib)
    raise ValueError(name)


def pytest_generate_tests(metafunc: Any) -> None:
    if "backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backend")
        names = ALL_BACKENDS if chosen == "all" else (chosen,)
        metafunc.parametrize("backend_name", names, scope="session")


@pytest.fixture(scope="session")
def backend(backend_name: str) -> Backend:
    return make_backend(backend_name)
