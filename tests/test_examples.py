"""The training examples ``examples/train_{torch,jax}.py`` run end to end (2 epochs, a subprocess).

Each needs its framework and scikit-learn (and optax for JAX); the ``--plot`` test also needs
matplotlib. A test is skipped, naming what to install, when one of them is missing, and runs
only with ``--backend`` all or the example's backend (the ``backends`` marker).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from _subprocess import run_python

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = [  # the script, with its backend, and the modules it imports besides
    pytest.param(
        "train_jax.py", ("optax", "sklearn"), marks=pytest.mark.backends("jax"), id="train_jax.py"
    ),
    pytest.param(
        "train_torch.py", ("sklearn",), marks=pytest.mark.backends("torch"), id="train_torch.py"
    ),
]
PIP_NAMES = {"sklearn": "scikit-learn"}


def skip_unless_installed(script: str, *modules: str) -> None:
    absent = [PIP_NAMES.get(m, m) for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        pytest.skip(f"examples/{script} needs {', '.join(absent)}: pip install {' '.join(absent)}")


def run_example(script: str, cwd: Path, *args: str) -> str:
    """``python examples/SCRIPT --epochs 2 ARGS`` in ``cwd``; its stdout, or a failure."""
    return run_python(
        [str(EXAMPLES / script), "--epochs", "2", *args],
        timeout=300,
        cwd=cwd,
        OMP_NUM_THREADS="1",
        JAX_PLATFORMS="cpu",
        MPLBACKEND="Agg",
    ).stdout


@pytest.mark.parametrize(("script", "modules"), SCRIPTS)
def test_example_runs_and_reports_accuracy(
    script: str, modules: tuple[str, ...], tmp_path: Path
) -> None:
    skip_unless_installed(script, *modules)
    out = run_example(script, tmp_path)
    assert "5-NN accuracy" in out, out
    for row in ("raw pixels", "untrained encoder", "learned embedding"):
        assert re.search(rf"^  {row} +[01]\.\d{{4}} +[01]\.\d{{4}}$", out, re.MULTILINE), out
    assert list(tmp_path.iterdir()) == []  # without --plot, nothing is written


@pytest.mark.parametrize(("script", "modules"), SCRIPTS)
def test_example_plots_the_loss_curve(
    script: str, modules: tuple[str, ...], tmp_path: Path
) -> None:
    skip_unless_installed(script, *modules, "matplotlib")
    path = tmp_path / "plots" / "loss.png"
    path.parent.mkdir()
    out = run_example(script, tmp_path, "--plot", str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved to {path}" in out
