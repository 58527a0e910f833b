"""The sigmoid section's measurements, run by ``_worker.py`` in a child process like the others:
the sigmoid loss (SigLIP) of infonce_xp against open_clip's ``SigLipLoss``, in time and in
tiled peak memory; and its two exchanges on gloo processes (``_sigmoid_gloo.py``).

open_clip's ``loss.py`` (open-clip-torch 3.3.0, installed with ``pip install --no-deps``) is
loaded alone from its file: the package is located, never imported (its dependencies are
absent), and the file itself imports only torch.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from _worker import interleaved, peak_of, torch_setup

TESTS = Path(__file__).resolve().parent.parent / "tests"
OPEN_CLIP = "open-clip-torch==3.3.0"
# the calls timed, each on the same unit-vector features and the same logit scale and bias
IMPLS = ("open_clip", "SigLipLoss", "SigmoidLoss")
BASE = "open_clip"
SCALE, BIAS = 10.0, -10.0  # SigLIP's start: logit_scale = 1 / 0.1, logit_bias = -10

Step = Callable[[], None]


def open_clip_loss() -> ModuleType | None:
    """open_clip's ``loss.py`` as a module of its own, or None where it is not installed
    (``tests/reference_sigmoid.py`` loads it, for the tests and for these timings alike)."""
    if str(TESTS) not in sys.path:
        sys.path.append(str(TESTS))  # last: tests/ shadows nothing installed
    from reference_sigmoid import open_clip_loss_module

    return open_clip_loss_module()


def missing(impl: str) -> str | None:
    """Why ``impl`` cannot run here, or None."""
    if impl == "open_clip" and open_clip_loss() is None:
        return f"skipped: open_clip is not installed (pip install --no-deps {OPEN_CLIP})"
    return None


def sigmoid_step(impl: str, n: int, dim: int, chunk: int | None = None) -> Step:
    """Forward and backward of one call: the gradients of both (n, dim) feature arrays (unit
    rows, as open_clip's model gives them) and of the learned logit scale and bias (0-D)."""
    torch = torch_setup()
    gen = torch.Generator().manual_seed(0)
    image, text = (
        torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1).requires_grad_()
        for _ in range(2)
    )
    scale = torch.tensor(SCALE, requires_grad=True)
    bias = torch.tensor(BIAS, requires_grad=True)
    grads = [image, text, scale, bias]
    forward: Callable[[], Any]
    if impl == "open_clip":
        module = open_clip_loss()
        assert module is not None, missing(impl)
        peer = module.SigLipLoss()
        forward = lambda: peer(image, text, scale, bias)  # noqa: E731
    elif impl == "SigLipLoss":
        from infonce_xp.peers import open_clip

        ours = open_clip.SigLipLoss(chunk_size=chunk)
        forward = lambda: ours(image, text, scale, bias)  # noqa: E731
    elif impl == "SigmoidLoss":
        from infonce_xp.torch import SigmoidLoss

        # temperature 0.1 and bias -10: the same logit scale and bias as the others
        loss = SigmoidLoss(
            learn_temperature=True, learn_bias=True, normalize=False, chunk_size=chunk
        )
        grads = [image, text, *loss.parameters()]
        forward = lambda: loss(image, text)  # noqa: E731
    else:
        raise ValueError(f"unknown impl {impl!r}")

    def step() -> None:
        for tensor in grads:
            tensor.grad = None
        forward().backward()

    return step


def sigmoid_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Interleaved forward+backward times of each call at each size."""
    impls = [impl for impl in spec["impls"] if missing(impl) is None]
    skipped = {impl: missing(impl) for impl in spec["impls"] if missing(impl) is not None}
    rows = []
    for n, dim in spec["sizes"]:
        steps = {impl: sigmoid_step(impl, n, dim) for impl in impls}
        rows.append({"n": n, "d": dim, "times": interleaved(steps, spec["budget_s"])})
        del steps
        gc.collect()
    return {"rows": rows, "skipped": skipped}


def sigmoid_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS above the inputs of one forward+backward (tiled with ``chunk``), and its time."""
    impl, n, dim, chunk = spec["impl"], spec["n"], spec["d"], spec.get("chunk")
    reason = missing(impl)
    if reason is not None:
        return {"skipped": reason}
    sigmoid_step(impl, 64, 16, chunk and min(chunk, 32))()  # load code paths
    return peak_of(sigmoid_step(impl, n, dim, chunk), 0.0)


def sigmoid_gloo(spec: dict[str, Any]) -> dict[str, Any]:
    """``exchange`` on ``world`` gloo processes (``_sigmoid_gloo.py``): time per step and peak
    resident memory per process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        return {"skipped": "skipped: this torch has no gloo backend"}
    from _sigmoid_gloo import launch

    return launch(spec)


JOBS = {"sigmoid_time": sigmoid_time, "sigmoid_peak": sigmoid_peak, "sigmoid_gloo": sigmoid_gloo}
