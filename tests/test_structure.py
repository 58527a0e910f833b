"""The layout holds: layers point one way, the math never asks for a library by name, docstrings
are literal, every option is documented and shown everywhere, and no file grows too big."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import infonce_xp

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(infonce_xp.__file__).resolve().parent

# Each module may import only modules of an earlier layer (imports inside functions included).
LAYERS = [
    ["_typing", "_micro_batches"],
    ["_namespaces"],
    ["_arrays"],
    ["_core", "_checks"],
    ["_stacks", "_blocks", "_rows"],
    ["_targets", "_siglip"],
    ["_cells"],
    ["_dense", "_tiled"],
    ["_directions", "_ring"],
    ["_reduction"],
    ["_lean"],
    ["_engine"],
    ["_options"],
    ["_docs", "_data"],
    ["_call"],
    [
        "_torch_autograd",
        "_jax_vjp",
        "_torch_grad_cache",
        "_jax_grad_cache",
        "_torch_gather",
        "_torch_compiled",
    ],
    ["_dispatch"],
    ["_loss", "_sigmoid_loss"],
    ["torch", "jax", "__init__"],
    ["__main__", "peers.__init__", "peers._common"],
    [
        "peers.lightly",
        "peers.open_clip",
        "peers.optax",
        "peers.pytorch_metric_learning",
        "peers.sentence_transformers",
    ],
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# Asking which library an array comes from is allowed only where choices are made once.
NAME_CHECKS = re.compile(
    r"\bis_(numpy|torch|jax|cupy|dask|ndonnx|array_api_strict)_(namespace|array)\b|\blibrary\("
)
MAY_NAME_LIBRARIES = {"_namespaces", "_arrays", "_dispatch"}


def _name(path: Path) -> str:
    """A module's name in the layers: ``_core``, ``peers.lightly``."""
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def sources() -> list[Path]:
    return sorted([*SRC.glob("*.py"), *SRC.glob("peers/*.py")])


def modules() -> dict[str, ast.Module]:
    return {_name(p): ast.parse(p.read_text(), str(p)) for p in sources()}


def internal_imports(tree: ast.Module, package: str = "") -> set[str]:
    """The package's modules that ``tree`` imports, anywhere in it (``package``: the
    subpackage ``tree`` is in, e.g. "peers")."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            folder = package if node.level == 1 else ""
            prefix = f"{folder}." if folder else ""
            if node.module:
                found.add(prefix + node.module.split(".")[0])
            else:  # from . import x: a module, or a name of the package itself
                found.update(
                    prefix + a.name
                    if (SRC / folder / f"{a.name}.py").exists()
                    else prefix + "__init__"
                    for a in node.names
                )
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            for name in names:
                if name and name.startswith("infonce_xp."):
                    found.add(name.split(".")[1])
    return found


def test_every_module_has_a_layer():
    assert set(modules()) <= set(RANK), set(modules()) - set(RANK)


@pytest.mark.parametrize("name", sorted(_name(p) for p in sources()))
def test_imports_point_down(name):
    path = SRC / f"{name.replace('.', '/')}.py"
    package = name.rpartition(".")[0]
    for target in internal_imports(ast.parse(path.read_text()), package):
        assert RANK[target] < RANK[name], f"{name} imports {target}, a layer at or above it"


def test_import_graph_has_no_cycle():
    graph = {
        name: internal_imports(tree, name.rpartition(".")[0]) for name, tree in modules().items()
    }
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != "open", f"import cycle: {' -> '.join([*path, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_only_arrays_and_dispatch_ask_for_a_library_by_name():
    for path in sources():
        if _name(path) in MAY_NAME_LIBRARIES:
            continue
        hits = NAME_CHECKS.findall(path.read_text())
        assert not hits, f"{path.name} asks which library it runs on: {hits}"


def test_no_docstring_is_assigned():
    """Docstrings are literal: no ``f.__doc__ = ...`` at module level, no ``__doc__ = ...`` in a
    class body (the ``fill_doc`` decorator fills placeholders of literal ones)."""
    for name, tree in modules().items():
        bodies = [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        for body in bodies:
            for stmt in body:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else []
                for t in targets:
                    assigned = getattr(t, "attr", None) or getattr(t, "id", None)
                    assert assigned != "__doc__", f"{name}.py:{stmt.lineno} assigns a docstring"


def public_objects():
    import importlib.util

    objects = [getattr(infonce_xp, n) for n in infonce_xp.__all__ if n != "__version__"]
    for module in ("torch", "jax"):
        if importlib.util.find_spec(module):
            mod = importlib.import_module(f"infonce_xp.{module}")
            objects += [getattr(mod, n) for n in mod.__all__]
    return [o for o in objects if inspect.isfunction(o) or inspect.isclass(o)]


@pytest.mark.parametrize("obj", public_objects(), ids=lambda o: f"{o.__module__}.{o.__name__}")
def test_public_objects_have_literal_numpydoc(obj):
    source = inspect.getsource(obj)
    tree = ast.parse(source.lstrip() if not source.startswith(" ") else "if 1:\n" + source)
    node = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
    literal = ast.get_docstring(node)
    assert literal, f"{obj.__name__} has no literal docstring"
    assert "%(" not in obj.__doc__, "a placeholder was left unfilled"


TAKES_OPTIONS = ["info_nce", "info_nce_value_and_grad", "InfoNCE"]


@pytest.mark.parametrize("module", ["infonce_xp", "infonce_xp.torch"])
def test_every_option_is_a_documented_keyword(module):
    mod = pytest.importorskip(module)
    for name in TAKES_OPTIONS:
        obj = getattr(mod, name, None)
        if obj is None:
            continue
        params = inspect.signature(obj).parameters
        doc = inspect.getdoc(obj)
        for field in dataclasses.fields(infonce_xp.Options):
            assert field.name in params, f"{module}.{name} does not show {field.name}"
            assert f"\n{field.name} :" in doc, f"{module}.{name} does not document {field.name}"


def test_options_are_keyword_only_after_the_seeds_three():
    params = inspect.signature(infonce_xp.info_nce).parameters
    assert list(params)[:6] == [
        "query",
        "positive_key",
        "negative_keys",
        "temperature",
        "reduction",
        "negative_mode",
    ]
    for name in ("symmetric", "normalize", "chunk_size", "gather", "xp"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("folder", ["src", "tests", "benchmarks"])
def test_no_file_is_a_monolith(folder):
    for path in sorted((ROOT / folder).rglob("*.py")):
        lines = len(path.read_text().splitlines())
        assert lines <= 420, f"{path.relative_to(ROOT)} has {lines} lines"
