"""Doctests of the modules that import a backend run only where that backend is installed."""

import importlib.util
from pathlib import Path

collect_ignore = ["noxfile.py", "docs", "benchmarks", "examples"]
collect_ignore += [
    str(path.relative_to(Path(__file__).parent))
    for path in sorted(Path(__file__).parent.glob("src/infonce_xp/*.py"))
    for library in ("torch", "jax")
    if library in path.stem and importlib.util.find_spec(library) is None
]
