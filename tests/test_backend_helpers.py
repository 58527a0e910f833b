"""The test helpers themselves: ``Backend.assert_close`` refuses what it must, ``asarrays``."""

from __future__ import annotations

import numpy as np
import pytest


def test_assert_close_checks_namespace_dtype_and_shape_before_values(backend):
    x = np.linspace(0.5, 1.5, 6)
    actual = backend.asarray(x)
    backend.assert_close(actual, x, rtol=0)
    backend.assert_close(actual, backend.asarray(x), rtol=0)
    with pytest.raises(AssertionError, match="expected"):  # a host copy is not a result
        backend.assert_close(x if backend.name != "numpy" else x.tolist(), x, rtol=0)
    with pytest.raises(AssertionError, match="dtype float64, expected float32"):
        backend.assert_close(actual, x.astype(np.float32), rtol=1e-3)
    with pytest.raises(AssertionError, match="shape"):
        backend.assert_close(actual, x[:, None], rtol=0)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        backend.assert_close(actual, x + 1e-3, rtol=1e-6)
    backend.assert_close(backend.asarray(x, "float32"), x, rtol=1e-6, dtype="float32")


def test_asarrays_converts_each_and_passes_none_through(backend):
    q, k = np.ones((2, 3, 4))
    got = backend.asarrays(q, None, k, dtype="float32")
    assert got[1] is None
    for a in (got[0], got[2]):
        backend.assert_close(a, q, rtol=0, dtype="float32")
