"""Every ```python block of README.md and docs/*.md runs, and the backend table cites real tests.

The blocks of one page run in order in one namespace, as a reader would run them, in a scratch
working directory. A block is skipped, with the reason, when it imports a library that is not
installed (torch, jax, cupy, the seed's ``info_nce``, ...), when it imports CuPy and no CUDA
device is there, or when its info string says ``gpu`` (```python gpu) and none of the libraries
it imports sees a GPU. With ``--backend=NAME`` (one nox session per backend) blocks that import
torch, jax or cupy run only in the sessions of that library (the rule of the ``backends``
marker, which their tests carry). Blocks whose info string says
``skip-test`` are never run: keep those for what cannot run in one process (multi-process
launches). Blocks in ``>>>`` form run as doctests. Each block imports what it uses, so that
skipping one never breaks the next.
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import io
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from _backends import BACKENDS, OF_LIBRARY
from _backends import why_skip as backend_skip

ROOT = Path(__file__).resolve().parents[1]
PYTHON = {"python", "py", "python3", "pycon"}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the first line of code
    code: str
    flags: tuple[str, ...]  # the info string's words after the language

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"


def pages() -> list[Path]:
    """README.md (once it exists) and the top-level pages of docs/."""
    candidates = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [page for page in candidates if page.is_file()]


def python_blocks(page: Path) -> list[Block]:
    """The fenced Python blocks of a CommonMark/MyST page, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            i += 1
            continue
        fence, indent, words = opening["fence"], len(opening["indent"]), opening["info"].split()
        body, j = [], i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if (
                closing
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            j += 1
        if words and words[0].lower() in PYTHON:
            blocks.append(Block(page, i + 2, "\n".join(body) + "\n", tuple(words[1:])))
        i = j + 1
    return blocks


BLOCKS = [block for page in pages() for block in python_blocks(page)]


def is_doctest(block: Block) -> bool:
    return block.code.lstrip().startswith(">>>")


def imported_modules(block: Block) -> list[str]:
    """Top-level names of the modules a block imports, in order of appearance."""
    if is_doctest(block):
        code = "\n".join(
            line.strip()[4:]
            for line in block.code.splitlines()
            if line.strip().startswith((">>>", "..."))
        )
    else:
        code = block.code
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return list(dict.fromkeys(names))


def block_backends(block: Block) -> tuple[str, ...]:
    """The backends whose sessions run a block: those of the libraries it imports (their GPU
    ones for a ``gpu`` block). NumPy-only blocks run in every session; they are cheap."""
    names = [b for name in imported_modules(block) for b in OF_LIBRARY.get(name, ())]
    if "gpu" in block.flags:
        names = [b for b in names if BACKENDS[b][1] not in (None, "cpu")]
    return tuple(names)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def why_skip(block: Block, backend: str = "all") -> str | None:
    """The reason not to run a block here, or None to run it."""
    if "skip-test" in block.flags:
        return "marked skip-test in the page"
    names = block_backends(block)
    if names and (reason := backend_skip(backend, names)) is not None:
        return reason
    if "gpu" not in block.flags:  # then every library it imports must run here (CuPy: a device)
        for library in imported_modules(block):
            if library in OF_LIBRARY and (reason := backend_skip("all", OF_LIBRARY[library])):
                return reason
    for name in imported_modules(block):
        if name not in sys.stdlib_module_names and importlib.util.find_spec(name) is None:
            return f"needs {name}, which is not installed"
        if name not in sys.stdlib_module_names and not _importable(name):
            # e.g. open-clip-torch, installed with --no-deps for its loss.py alone
            return f"needs {name}, which is installed without what it imports"
    if "gpu" in block.flags and not names:
        return "needs a GPU visible to an array library"
    return None


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def execute(block: Block, namespace: dict[str, Any]) -> None:
    if is_doctest(block):
        parser = doctest.DocTestParser()
        test = parser.get_doctest(block.code, namespace, block.id, str(block.page), block.line - 1)
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        report = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=flags)
        runner.run(test, out=report.write, clear_globs=False)
        if runner.failures:
            raise AssertionError(f"doctest in {block.id} failed:\n{report.getvalue()}")
        return
    # Pad so that tracebacks give the line numbers of the page.
    code = compile("\n" * (block.line - 1) + block.code, str(block.page), "exec")
    exec(code, namespace)


@dataclass
class PageRun:
    """The blocks of one page, run in order once; the outcome of each is kept for its test."""

    blocks: list[Block]
    workdir: Path
    backend: str = "all"
    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__docs__"})
    outcomes: list[tuple[str, Any]] = field(default_factory=list)
    failed: Block | None = None

    def outcome(self, index: int) -> tuple[str, Any]:
        while len(self.outcomes) <= index:
            block = self.blocks[len(self.outcomes)]
            reason = why_skip(block, self.backend)
            if reason is None and self.failed is not None:
                reason = f"an earlier block of the page ({self.failed.id}) failed"
            if reason is not None:
                self.outcomes.append(("skipped", reason))
                continue
            try:
                with working_directory(self.workdir):
                    execute(block, self.namespace)
            except Exception as error:  # raised again by this block's own test
                self.failed = block
                self.outcomes.append(("failed", error))
            else:
                self.outcomes.append(("passed", None))
        return self.outcomes[index]


@pytest.fixture(scope="session")
def page_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[Path, PageRun]:
    backend = request.config.getoption("--backend", default="all")
    runs = {}
    for page in pages():
        blocks = [block for block in BLOCKS if block.page == page]
        runs[page] = PageRun(blocks, tmp_path_factory.mktemp(page.stem), backend)
    return runs


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(block, id=block.id, marks=[pytest.mark.backends(*names)] if names else [])
        for block in BLOCKS
        for names in [block_backends(block)]
    ],
)
def test_code_block_runs(block: Block, page_runs: dict[Path, PageRun]) -> None:
    run = page_runs[block.page]
    status, detail = run.outcome(run.blocks.index(block))
    if status == "skipped":
        pytest.skip(detail)
    if status == "failed":
        raise detail


def test_pages_are_found() -> None:
    names = {page.name for page in pages()}
    assert {"index.md", "quickstart.md", "math.md", "migrating.md"} <= names
    assert len([b for b in BLOCKS if b.page.name == "quickstart.md"]) >= 4


def test_fence_parser(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\na = 1\n```\n````markdown\n```python\nnot = code\n```\n````\n"
        "```{code-block} python\nb = 2\n```\n  ~~~python skip-test\n  c = 3\n  ~~~\n",
        encoding="utf-8",
    )
    blocks = python_blocks(page)
    assert [(b.line, b.code, b.flags) for b in blocks] == [
        (3, "a = 1\n", ()),
        (14, "c = 3\n", ("skip-test",)),
    ]


def test_backend_table_cites_existing_tests() -> None:
    """Every test file and test function named in docs/backends.md exists in tests/."""
    text = (ROOT / "docs" / "backends.md").read_text(encoding="utf-8")
    files = set(re.findall(r"`(test_\w+\.py)`", text))
    functions = set(re.findall(r"`(test_\w+)`", text))
    assert files and functions, "docs/backends.md names no tests"
    sources = "\n".join(
        path.read_text(encoding="utf-8") for path in (ROOT / "tests").glob("test_*.py")
    )
    missing = [f"tests/{name}" for name in sorted(files) if not (ROOT / "tests" / name).is_file()]
    missing += [
        name for name in sorted(functions) if not re.search(rf"^def {name}\(", sources, re.M)
    ]
    assert not missing, f"docs/backends.md cites tests that do not exist: {missing}"
