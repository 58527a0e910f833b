"""Independent references: a plain float64 NumPy InfoNCE, and the seed on torch."""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def reference_rows(
    q, k, neg=None, temperature=0.1, mode="unpaired", symmetric=False, normalize=True
):
    """Per-query InfoNCE losses in float64, written the textbook way (logits, then cross-entropy)."""
    q, k = (np.asarray(a, dtype=np.float64) for a in (q, k))
    if normalize:
        q, k = normalise(q), normalise(k)
    if neg is None:
        logits = q @ k.T / temperature
        rows = _cross_entropy(logits, np.arange(len(q)))
        if symmetric:
            rows = (rows + _cross_entropy(logits.T, np.arange(len(q)))) / 2
        return rows
    neg = np.asarray(neg, dtype=np.float64)
    if normalize:
        neg = normalise(neg)
    positive = np.sum(q * k, axis=1, keepdims=True)
    negative = q @ neg.T if mode == "unpaired" else np.einsum("nd,nmd->nm", q, neg)
    logits = np.concatenate([positive, negative], axis=1) / temperature
    return _cross_entropy(logits, np.zeros(len(q), dtype=int))


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return lse - logits[np.arange(len(labels)), labels]


def reduce(rows: np.ndarray, reduction: str) -> np.ndarray:
    return {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]


def seed(
    q, k, neg=None, temperature=0.1, reduction="mean", mode="unpaired", dtype="float64", grad=False
):
    """The seed package's loss (and, with grad=True, its autograd gradients) as NumPy."""
    import torch
    from info_nce import info_nce

    tensors = [
        None
        if a is None
        else torch.tensor(np.asarray(a), dtype=getattr(torch, dtype), requires_grad=grad)
        for a in (q, k, neg)
    ]
    loss = info_nce(*tensors, temperature=temperature, reduction=reduction, negative_mode=mode)
    if not grad:
        return loss.detach().numpy()
    loss.sum().backward()
    return loss.detach().numpy(), [None if t is None else t.grad.numpy() for t in tensors]


def finite_difference(f, x, eps=1e-6):
    """Central differences of the scalar ``f`` at ``x`` (an array, or a number)."""
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad if grad.ndim else float(grad)
