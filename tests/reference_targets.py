"""Targets beyond one-hot (DESIGN.md, "Targets beyond one-hot, margins and weights") in plain
float64 NumPy, row by row, on the candidate sets of ``reference_recipes.py``; and a port of the
debiased / hard-negative loss of joshr17/HCL in torch float64 autograd.

Each row's candidates (their logits z, own positive, same-class flags, the guide's kept cells)
come from ``recipe_rows`` through its ``row_loss`` hook; the row losses are written here from the
contract's formulas, the reduction with ``sample_weight`` too. Nothing is shared with
``infonce_xp``. Checked against ``torch.nn.functional.cross_entropy`` and the HCL port in
``test_targets.py``.
"""

from __future__ import annotations

import numpy as np

from reference_recipes import _lse, _row_loss, recipe_rows

# the recipe options that do not change a row's candidates or their order
_SCORING_ONLY = (
    "temperature",
    "decoupled",
    "decoupled_sigma",
    "hardness_mode",
    "hardness_strength",
    "guide_margin",
    "guide_strategy",
    "guide",
)


def debiased_row(z_positive, z_negatives, t, prior, beta, dtype=np.float64):
    """One row of the debiased / hardness-reweighted loss, with plain exponentials in ``dtype``
    (float32 overflows for large logits; the point of ``test_targets_stability``):
    w_j = Q softmax_j(beta z_j), Ng = max((sum_j w_j e^{z_j} - prior Q e^{z_p}) / (1 - prior),
    Q e^{-1/t}), l = -z_p + log(e^{z_p} + Ng)."""
    z_p = dtype(z_positive)
    z_n = np.asarray(z_negatives, dtype=dtype)
    q = dtype(z_n.size)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        importance = np.exp(dtype(beta) * z_n)
        w = q * importance / importance.sum() if z_n.size else importance
        estimate = ((w * np.exp(z_n)).sum() - dtype(prior) * q * np.exp(z_p)) / (1 - dtype(prior))
        negatives = np.maximum(estimate, q * np.exp(dtype(-1.0) / dtype(t)))
        return -z_p + np.log(np.exp(z_p) + negatives)


def _teacher_similarities(teacher, options):
    """Each row's teacher similarities over the full candidate list (before a guide drops any),
    keyed by (direction, row): ``recipe_rows`` run on the teacher's arrays at temperature 1."""
    record = {}

    def keep(direction, i, z, own, same, block, weight, kept):
        record[direction, i] = z
        return 0.0, 0

    plain = {n: v for n, v in options.items() if n not in _SCORING_ONLY}
    recipe_rows(*teacher, temperature=1.0, row_loss=keep, **plain)
    return record


def target_rows(
    query,
    positive_key,
    negative_keys=None,
    *,
    temperature=0.1,
    label_smoothing=0.0,
    teacher=None,
    teacher_temperature=1.0,
    margin=0.0,
    debiased_prior=0.0,
    hardness_beta=0.0,
    **recipe_options,
):
    """Per-row losses (N,) and per-row positive-pair counts (N,), in float64 (both the mean of
    the two directions under ``symmetric``)."""
    t, e = float(temperature), float(label_smoothing)
    positives = recipe_options.get("positives", "own")
    debiased = debiased_prior != 0 or hardness_beta != 0
    if debiased and (positives != "own" or recipe_options.get("decoupled")):
        raise ValueError("debiasing needs positives='own'")
    if debiased and (e or teacher is not None):
        raise ValueError("debiasing takes no label_smoothing or teacher")
    if positives == "pairs" and (e or teacher is not None):
        raise ValueError("positives='pairs' takes no label_smoothing or teacher")
    similarities = None
    if teacher is not None:
        teacher = [None if a is None else np.asarray(a, dtype=np.float64) for a in teacher]
        teacher = teacher + [None] * (3 - len(teacher))
        similarities = _teacher_similarities(teacher, recipe_options)
    counts = {}

    def row(direction, i, z, own, same, block, weight, kept):
        z = np.array(z, dtype=np.float64)
        positive = own if positives == "own" else own | same
        z[positive] -= margin / t  # (s - m) / t on every positive of the row
        if debiased:
            z_negatives = z[~own & ~same]
            loss, count = (
                float(debiased_row(z[own][0], z_negatives, t, debiased_prior, hardness_beta)),
                1,
            )
        elif e or teacher is not None:
            # the row's kept candidates: "own" hides its same-class cells
            cells = ~same if positives == "own" else np.ones_like(same)
            z_kept = z[cells]
            log_p = z_kept - _lse(z_kept)
            count = int(positive.sum())
            if teacher is not None:
                s = similarities[direction, i]
                s = s if kept is None else s[kept]
                y = s[cells] / teacher_temperature
                y = np.exp(y - y.max())
                y = y / y.sum()
            else:  # one-hot, spread evenly over the positives with "supcon"
                y = positive[cells] / max(count, 1)
            target = (1 - e) * y + e / z_kept.size
            loss = 0.0 if count == 0 else float(-(target * log_p).sum())
        else:
            loss, count = _row_loss(
                z, own, same, positives, recipe_options.get("decoupled", False), block, weight
            )
        counts[direction, i] = count
        return loss, count

    rows, _ = recipe_rows(
        query, positive_key, negative_keys, temperature=t, row_loss=row, **recipe_options
    )
    n = len(rows)
    pair_counts = np.array([counts[0, i] for i in range(n)], dtype=np.float64)
    if recipe_options.get("symmetric"):
        pair_counts = (pair_counts + np.array([counts[1, i] for i in range(n)])) / 2
    return rows, pair_counts


def target_loss(
    query,
    positive_key,
    negative_keys=None,
    *,
    temperature=0.1,
    reduction="mean",
    sample_weight=None,
    **options,
):
    """``target_rows`` reduced with the sample weights w: "none" w_i l_i, "sum" sum w_i l_i,
    "mean" sum w_i l_i / sum w_i (/ sum w_i n_i with positives="pairs"; 0 if that is 0)."""
    rows, pair_counts = target_rows(
        query, positive_key, negative_keys, temperature=temperature, **options
    )
    w = np.ones(len(rows)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    weighted = w * rows
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return np.asarray(weighted.sum())
    if options.get("positives", "own") == "pairs":
        denominator = float((w * pair_counts).sum())
    else:
        denominator = float(w.sum())
    return np.asarray(weighted.sum() / denominator if denominator else 0.0)


def hcl_criterion(out_1, out_2, tau_plus, beta, estimator, temperature, detach_weights=False):
    """A port of ``criterion`` of joshr17/HCL (Robinson, Chuang, Sra, Jegelka, "Contrastive
    learning with hard negative samples", ICLR 2021; https://github.com/joshr17/HCL,
    image/main.py), for torch tensors, with the model's ``F.normalize(out, dim=-1)`` applied here.

    The 2B anchors are both views; each one's positive is the other view of its sample, its
    negatives the other 2B - 2 embeddings. "hard": importance weights imp = e^{beta s / t}
    normalised to mean 1 (not detached), Ng = (sum imp neg - tau+ N pos) / (1 - tau+) clamped
    below at N e^{-1/t}; "easy": Ng = sum neg. The loss: mean of -log(pos / (pos + Ng)).
    ``detach_weights`` (not in HCL, which keeps imp in the graph): imp as constants, to show
    that the tests can tell the two gradients apart.
    """
    import torch
    import torch.nn.functional as F

    out_1, out_2 = F.normalize(out_1, dim=-1), F.normalize(out_2, dim=-1)
    batch_size = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)
    neg = torch.exp(out @ out.T / temperature)
    mask = torch.ones((batch_size, 2 * batch_size), dtype=torch.bool)
    for i in range(batch_size):
        mask[i, i] = False
        mask[i, i + batch_size] = False
    mask = torch.cat([mask, mask], dim=0)
    neg = neg.masked_select(mask).view(2 * batch_size, -1)
    pos = torch.exp((out_1 * out_2).sum(dim=-1) / temperature)
    pos = torch.cat([pos, pos], dim=0)
    if estimator == "hard":
        n = 2 * batch_size - 2
        imp = (beta * neg.log()).exp()
        imp = imp.detach() if detach_weights else imp
        reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
        ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
        ng = torch.clamp(ng, min=n * np.e ** (-1 / temperature))
    elif estimator == "easy":
        ng = neg.sum(dim=-1)
    else:
        raise ValueError(f"estimator must be 'hard' or 'easy', got {estimator!r}")
    return (-torch.log(pos / (pos + ng))).mean()
