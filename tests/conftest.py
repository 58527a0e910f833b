"""Backends under test, the ``backends`` marker and Hypothesis profiles.

``pytest --backend=NAME`` (what each nox ``tests`` session passes) runs the backend-parametrised
tests on that backend only, and the tests marked ``@pytest.mark.backends(...)`` only where NAME
is one of theirs; without it, everything runs on every installed backend. A backend that is not
installed, or has no device, is skipped with its reason (see ``_backends.py``).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from _backends import ALL_BACKENDS, Backend, make_backend, why_skip

settings.register_profile("default", max_examples=25, deadline=None)
settings.register_profile(
    "ci", max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--backend",
        default="all",
        choices=("all", *ALL_BACKENDS),
        help="run backend-parametrised tests on this backend only (default: all installed)",
    )


def pytest_generate_tests(metafunc: Any) -> None:
    if "backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backend")
        names = ALL_BACKENDS if chosen == "all" else (chosen,)
        metafunc.parametrize("backend_name", names, scope="session")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("backends"):
        reason = why_skip(item.config.getoption("--backend"), marker.args)
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def backend(backend_name: str) -> Backend:
    return make_backend(backend_name)
