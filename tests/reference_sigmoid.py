"""The sigmoid loss (DESIGN.md, "The sigmoid loss (SigLIP)") in plain float64 NumPy, and
open_clip 3.3.0's ``loss.py`` loaded on its own, its ``SigLipLoss`` the oracle of the reference.

Nothing here is shared with ``infonce_xp``. ``open_clip_loss_module`` reads the file of an
install made with ``pip install --no-deps open-clip-torch==3.3.0`` without importing the
package (whose dependencies are absent here): the file itself only imports torch.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType
from typing import Any

import numpy as np

OPEN_CLIP = "open-clip-torch==3.3.0"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def siglip_reference(
    q: Any,
    k: Any,
    t: Any,
    b: Any,
    labels: Any = None,
    normalize: bool = True,
    reduction: str = "mean",
) -> np.ndarray:
    """The SigLIP loss in float64: s_ij the cosine (the dot product when ``normalize`` is
    False), x_ij = s_ij / t + b, y_ij = +1 where j == i or labels[i] == labels[j] and -1
    elsewhere, l_i = sum_j softplus(-y_ij x_ij); "mean" is sum_i l_i / N, "sum" sum_i l_i,
    "none" the (N,) rows."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    t = float(t)
    b = float(b)
    if normalize:
        q, k = _unit(q), _unit(k)
    n = q.shape[0]
    similarities = q @ k.T
    logits = similarities / t + b
    positive = np.eye(n, dtype=bool)
    if labels is not None:
        labels = np.asarray(labels)
        positive |= labels[:, None] == labels[None, :]
    signs = np.where(positive, 1.0, -1.0)
    # softplus(z) = log(1 + e^z) = logaddexp(0, z): no overflow for large z
    rows = np.logaddexp(0.0, -signs * logits).sum(axis=1)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return np.asarray(rows.sum())
    if reduction == "mean":
        return np.asarray(rows.sum() / n)
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum'; got {reduction!r}")


@functools.cache
def open_clip_loss_module() -> ModuleType | None:
    """open_clip's ``loss.py`` as a module of its own (``SigLipLoss``, ``ClipLoss``), or None
    where open-clip-torch (or torch) is not installed. The package is located, not imported."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    if importlib.util.find_spec("torch") is None:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "loss.py")
    if not os.path.isfile(path):
        return None
    loss_spec = importlib.util.spec_from_file_location("_open_clip_loss_alone", path)
    if loss_spec is None or loss_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module


def require_open_clip() -> ModuleType:
    """open_clip's ``loss.py`` module, or a pytest skip that says how to install it."""
    import pytest  # here: the benchmarks import this module without pytest

    module = open_clip_loss_module()
    if module is None:
        pytest.skip(
            f"open_clip's loss.py is not available: pip install --no-deps {OPEN_CLIP} (and torch)"
        )
    return module


def open_clip_siglip(
    image_features: Any, text_features: Any, logit_scale: Any, logit_bias: Any
) -> Any:
    """open_clip's ``SigLipLoss()`` (one worker) on features normalised as open_clip's models
    do before the loss (``F.normalize``); skips where open_clip is missing."""
    from torch.nn import functional as F

    module = require_open_clip()
    return module.SigLipLoss()(
        F.normalize(image_features, dim=-1),
        F.normalize(text_features, dim=-1),
        logit_scale,
        logit_bias,
    )
