"""Test matrix, lint, type check, docs and benchmarks: ``nox`` runs the CPU defaults."""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = [
    "tests(numpy)",
    "tests(array_api_strict)",
    "tests(torch)",
    "tests(jax)",
    "tests(cupy_like)",
    "lint",
    "typecheck",
    "docs",
]

PYPROJECT = nox.project.load_toml("pyproject.toml")
# The CPU wheel of this torch is on our machines' disks; an unpinned torch can pull a
# several-GB CUDA build. Override with INFONCE_TORCH="torch==X.Y" elsewhere.
TORCH = os.environ.get("INFONCE_TORCH", "torch==2.13.0")
JAX = os.environ.get("INFONCE_JAX", "jax")
# open_clip's loss.py, the oracle of the sigmoid loss (tests/reference_sigmoid.py), is loaded
# alone from a pure-python wheel installed without its dependencies (it imports only torch)
OPEN_CLIP = "open-clip-torch==3.3.0"
BACKEND_PACKAGES = {
    "numpy": [],
    "array_api_strict": [],
    "torch": [],
    "jax": [JAX, "optax", "pytest-xdist"],
    "cupy_like": [],
    "cupy": [os.environ.get("INFONCE_CUPY", "cupy-cuda12x")],
    "torch-cuda": [],
    "jax-gpu": [os.environ.get("INFONCE_JAX_GPU", "jax[cuda12]")],
}

# JAX compiles a program for each new shape and option, on one core: its session (the longest)
# runs on two processes, each test file in one (a file's module-scoped fixtures run once).
PARALLEL = {"jax": ["-n", "2", "--dist", "loadfile"]}


def group(name: str) -> list[str]:
    return nox.project.dependency_groups(PYPROJECT, name)


@nox.session
@nox.parametrize(
    "backend",
    [
        *(nox.param(b, id=b) for b in ("numpy", "array_api_strict", "torch", "jax", "cupy_like")),
        *(nox.param(b, id=b, tags=["gpu"]) for b in ("cupy", "torch-cuda", "jax-gpu")),
    ],
)
def tests(session: nox.Session, backend: str) -> None:
    """Run the test suite with one backend under test (the seed's torch is always there)."""
    session.install(TORCH, *BACKEND_PACKAGES[backend], *group("test"))
    session.install("-e", ".", "--no-deps")
    session.install("array-api-compat")
    session.install("--no-deps", OPEN_CLIP)
    args = session.posargs or []
    if backend in PARALLEL and not args:
        args = PARALLEL[backend]
    session.run(
        "pytest",
        f"--backend={backend}",
        *args,
        env={"HYPOTHESIS_PROFILE": "ci" if os.environ.get("CI") else "default"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install(*group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install(TORCH, JAX, *group("typecheck"), "-e", ".")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx site with warnings as errors (examples in it are executed)."""
    session.install(TORCH, JAX, *group("docs"), "-e", ".")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against the seed and the bare matrix product (see benchmarks/README.md)."""
    session.install(TORCH, JAX, *group("bench"), "-e", ".")
    session.install("--no-deps", OPEN_CLIP)  # the sigmoid section's peer
    session.run("python", "benchmarks/run.py", *session.posargs)
