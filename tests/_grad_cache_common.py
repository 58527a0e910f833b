"""What the grad_cache tests of both libraries share: the tolerance of "equal to full-batch"."""

from __future__ import annotations

from typing import Any

import numpy as np

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


def assert_close(actual: Any, expected: Any, dtype: str, what: str = "") -> None:
    """Equal to ``TOLERANCE[dtype]`` of the largest entry of ``expected``."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    error = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g} > {TOLERANCE[dtype]}"
