"""``run_python``: a Python child with this checkout's ``infonce_xp``, a timeout and clear failures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import infonce_xp

SRC = Path(infonce_xp.__file__).resolve().parent.parent  # the infonce_xp under test, for children
TAIL = 6000  # characters of each stream shown when a child fails


def run_python(
    args: list[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` in a new session and return it (``stdout`` and ``stderr`` apart).

    The child imports the ``infonce_xp`` under test (``SRC`` first on ``PYTHONPATH``) and gets
    ``env`` on top of this process's environment. On timeout the whole session is killed (the
    child's own children too: spawned workers, a hung collective), and the test fails with what
    the child had printed; a non-zero exit fails it likewise.
    """
    environ = {**os.environ, **env}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    command = f"`python {' '.join(args)}`"
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover
            proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"{command} timed out after {timeout} s\n{_tails(stdout, stderr)}")
    if proc.returncode != 0:
        pytest.fail(f"{command} exited with {proc.returncode}\n{_tails(stdout, stderr)}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _tails(stdout: str, stderr: str) -> str:
    return f"--- stdout (end) ---\n{stdout[-TAIL:]}\n--- stderr (end) ---\n{stderr[-TAIL:]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
