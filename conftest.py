"""Doctests of the backend adapters run only where their backend is installed."""

import importlib.util

collect_ignore = ["noxfile.py", "docs", "benchmarks", "examples"]
collect_ignore += [
    f"src/infonce_xp/{name}.py"
    for name in ("torch", "jax")
    if importlib.util.find_spec(name) is None
]
