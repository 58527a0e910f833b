"""The peers section's measurements, run by ``_worker.py`` in a child process like the others:
each class of ``infonce_xp.peers`` against the peer library's own code, in time and (for
sentence-transformers' MultipleNegativesRankingLoss) in peak memory.

lightly and open_clip need a newer torch than the benchmarks' environment has; their code is
the ports of ``tests/reference_peers.py`` (line for line where it computes). optax is JAX and
is left out of this torch section.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _worker import interleaved, peak_of, torch_setup

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
HARDNESS = {"hardness_mode": "in_batch_negatives", "hardness_strength": 5.0}

# class of infonce_xp.peers -> the peer's code it is timed against (Markdown, for the report)
CLASSES: dict[str, str] = {
    "pml.NTXentLoss": "pytorch-metric-learning `losses.NTXentLoss(0.07)`",
    "pml.SupConLoss": "pytorch-metric-learning `losses.SupConLoss(0.1)`",
    "st.MultipleNegativesRankingLoss": "sentence-transformers "
    "`MultipleNegativesRankingLoss(model, scale=20.0)`",
    "st.MultipleNegativesRankingLoss (hardness)": "the same with "
    '`hardness_mode="in_batch_negatives", hardness_strength=5.0`',
    "lightly.NTXentLoss": "lightly 1.5 `NTXentLoss(0.5)`, ported",
    "lightly.DCLLoss": "lightly 1.5 `DCLLoss(0.1)`, ported",
    "lightly.DCLWLoss": "lightly 1.5 `DCLWLoss(0.1, sigma=0.5)`, ported",
    "open_clip.ClipLoss": "open_clip 3.x `ClipLoss()`, ported",
}
# the package each class's peer imports (the ported ones import none)
NEEDS = {
    "pml.NTXentLoss": "pytorch_metric_learning",
    "pml.SupConLoss": "pytorch_metric_learning",
    "st.MultipleNegativesRankingLoss": "sentence_transformers",
    "st.MultipleNegativesRankingLoss (hardness)": "sentence_transformers",
}

Step = Callable[[], None]


@contextlib.contextmanager
def benchmarks_off_path() -> Iterator[None]:
    """Imports that see installed packages only: transformers (under sentence-transformers)
    imports the package ``kernels`` when one is installed, and would get ``kernels.py`` here."""
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if Path(p or ".").resolve() != HERE]
    try:
        yield
    finally:
        sys.path[:] = saved


def leaves(torch: Any, n: int, dim: int, count: int, unit: bool = False) -> list[Any]:
    """``count`` (n, dim) float32 inputs that require grad; L2-normalised rows if ``unit``."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        x = torch.randn(n, dim, generator=gen)
        if unit:
            x = torch.nn.functional.normalize(x, dim=1)
        out.append(x.requires_grad_())
    return out


def losses(name: str, chunk: int | None) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(ours, the peer's code) for one class, each called on the class's inputs."""
    import torch

    from infonce_xp.peers import lightly, open_clip
    from infonce_xp.peers import pytorch_metric_learning as pml
    from infonce_xp.peers import sentence_transformers as st

    if name.startswith("pml."):
        from pytorch_metric_learning import losses as peer_pml

        kind, temperature = name.split(".")[1], 0.07 if "NTXent" in name else 0.1
        return getattr(pml, kind)(temperature, chunk_size=chunk), getattr(peer_pml, kind)(
            temperature
        )
    if name.startswith("st."):
        with benchmarks_off_path():
            try:
                from sentence_transformers.sentence_transformer import losses as peer_st
            except ImportError:  # sentence-transformers before 6
                from sentence_transformers import losses as peer_st  # type: ignore[no-redef]

        options = HARDNESS if name.endswith("(hardness)") else {}
        ours = st.MultipleNegativesRankingLoss(scale=20.0, chunk_size=chunk, **options)
        peer = peer_st.MultipleNegativesRankingLoss(torch.nn.Module(), scale=20.0, **options)
        return ours, lambda *columns: peer.compute_loss_from_embeddings(list(columns), None)
    if str(TESTS) not in sys.path:
        sys.path.append(str(TESTS))  # last: tests/ shadows nothing installed
    from reference_peers import lightly_dcl, lightly_ntxent, open_clip_loss

    if name == "lightly.NTXentLoss":
        return lightly.NTXentLoss(0.5, chunk_size=chunk), lambda a, b: lightly_ntxent(a, b, 0.5)
    if name == "lightly.DCLLoss":
        return lightly.DCLLoss(0.1, chunk_size=chunk), lambda a, b: lightly_dcl(a, b, 0.1)
    if name == "lightly.DCLWLoss":
        ours = lightly.DCLWLoss(0.1, sigma=0.5, chunk_size=chunk)
        return ours, lambda a, b: lightly_dcl(a, b, 0.1, sigma=0.5)
    if name == "open_clip.ClipLoss":
        return open_clip.ClipLoss(chunk_size=chunk), open_clip_loss
    raise ValueError(f"unknown class {name!r}")


def peer_steps(name: str, n: int, dim: int, chunk: int | None = None) -> dict[str, Step]:
    """Forward and backward (gradients of every input) of ours and of the peer's code."""
    torch = torch_setup()
    ours, peer = losses(name, chunk)
    args: list[Any]
    if name.startswith("pml."):
        (x,) = leaves(torch, n, dim, 1)
        args = [x, torch.arange(n) % max(n // 2, 1)]  # every row has one positive
        grads = [x]
    elif name.startswith("st."):
        args = grads = leaves(torch, n, dim, 3)  # anchor, positive, one hard negative
    elif name.startswith("lightly."):
        args = grads = leaves(torch, n, dim, 2)
    else:  # open_clip: the model's features are unit vectors, its logit_scale a 0-D tensor
        image, text = leaves(torch, n, dim, 2, unit=True)
        scale = torch.tensor(100.0, requires_grad=True)
        args = grads = [image, text, scale]

    def step_of(loss: Callable[..., Any]) -> Step:
        def step() -> None:
            for tensor in grads:
                tensor.grad = None
            loss(*args).backward()

        return step

    return {"ours": step_of(ours), "peer": step_of(peer)}


def missing(name: str) -> str | None:
    """Why the peer of ``name`` cannot run here, or None."""
    import importlib.util

    module = NEEDS.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"skipped: {module} is not installed"
    return None


def peers_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Interleaved forward+backward times of ours and the peer's code, class by class, each at
    its (N, D) of ``spec["sizes"]``."""
    rows: dict[str, Any] = {}
    for name, (n, dim) in spec["sizes"].items():
        reason = missing(name)
        if reason is not None:
            rows[name] = reason
            continue
        try:
            rows[name] = interleaved(peer_steps(name, n, dim), spec["budget_s"])
        except (RuntimeError, MemoryError) as error:  # as torch's allocator reports it
            rows[name] = f"not run: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
        gc.collect()
    return {"rows": rows}


def peers_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS above the inputs of one forward+backward of ours or of the peer's code."""
    name, impl, n, dim, chunk = spec["class"], spec["impl"], spec["n"], spec["d"], spec["chunk"]
    reason = missing(name)
    if reason is not None:
        return {"skipped": reason}
    peer_steps(name, 64, 16, chunk and min(chunk, 32))[impl]()  # load code paths
    return peak_of(peer_steps(name, n, dim, chunk)[impl], 0.0)


JOBS = {"peers_time": peers_time, "peers_peak": peers_peak}
