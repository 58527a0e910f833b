"""The training examples ``examples/train_{torch,jax}.py`` run end to end (2 epochs, a subprocess).

Each needs its framework and scikit-learn (and optax for JAX); the ``--plot`` test also needs
matplotlib. A test is skipped, naming what to install, when one of them is missing, and runs
only with ``--backend`` all or the example's backend.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import infonce_xp

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = Path(infonce_xp.__file__).resolve().parent.parent  # the infonce_xp under test, for children
SCRIPTS = {  # script: (backend, modules it imports)
    "train_torch.py": ("torch", ("torch", "sklearn")),
    "train_jax.py": ("jax", ("jax", "optax", "sklearn")),
}
PIP_NAMES = {"sklearn": "scikit-learn"}


def skip_unless_runnable(request: pytest.FixtureRequest, script: str, *extra: str) -> None:
    backend, modules = SCRIPTS[script]
    chosen = request.config.getoption("--backend")
    if chosen not in ("all", backend):
        pytest.skip(f"examples/{script} runs with --backend={backend} or all, not {chosen}")
    absent = [
        PIP_NAMES.get(m, m) for m in (*modules, *extra) if importlib.util.find_spec(m) is None
    ]
    if absent:
        pytest.skip(f"examples/{script} needs {', '.join(absent)}: pip install {' '.join(absent)}")


def run_example(script: str, cwd: Path, *args: str) -> str:
    """``python examples/SCRIPT --epochs 2 ARGS`` in ``cwd``; its stdout, or a failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [sys.executable, str(EXAMPLES / script), "--epochs", "2", *args]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"examples/{script} timed out after 300 s:\n{out[-2000:]}\n{err[-2000:]}")
    assert proc.returncode == 0, f"examples/{script} exited {proc.returncode}:\n{out}\n{err}"
    return out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_example_runs_and_reports_accuracy(
    request: pytest.FixtureRequest, script: str, tmp_path: Path
) -> None:
    skip_unless_runnable(request, script)
    out = run_example(script, tmp_path)
    assert "5-NN accuracy" in out, out
    for row in ("raw pixels", "untrained encoder", "learned embedding"):
        assert re.search(rf"^  {row} +[01]\.\d{{4}} +[01]\.\d{{4}}$", out, re.MULTILINE), out
    assert list(tmp_path.iterdir()) == []  # without --plot, nothing is written


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_example_plots_the_loss_curve(
    request: pytest.FixtureRequest, script: str, tmp_path: Path
) -> None:
    skip_unless_runnable(request, script, "matplotlib")
    path = tmp_path / "plots" / "loss.png"
    path.parent.mkdir()
    out = run_example(script, tmp_path, "--plot", str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved to {path}" in out
