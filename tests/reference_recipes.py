"""The recipes of DESIGN.md ("Recipes") in plain float64 NumPy, written the textbook way.

Every row lists its candidates one by one (logit, own positive?, same-class?) in the contract's
blocks: the keys when in-batch negatives are on (else the own positive alone), the other queries
when ``same_view_negatives``, the explicit negatives. The three ``positives`` modes then read
that list. Nothing here is shared with ``infonce_xp``; it is checked against the peers (the seed,
pytorch-metric-learning, optax, sentence-transformers) in ``test_recipes_reference.py``.
"""

from __future__ import annotations

import functools

import numpy as np

from reference import normalise


def _lse(z: np.ndarray) -> float:
    """log(sum(exp(z))); -inf for no terms."""
    if z.size == 0:
        return -np.inf
    top = z.max()
    return float(top + np.log(np.exp(z - top).sum()))


def _softplus(x: float) -> float:
    return float(np.logaddexp(0.0, x))


def _row_loss(z, own, same, positives, decoupled=False, block=None, weight=1.0):
    """One anchor's loss and number of positive pairs, from its candidates' logits and flags.

    ``own`` marks the own positive (at most one), ``same`` the same-class candidates, ``block``
    each candidate's block (0 keys, 1 other anchors, 2 explicit negatives). ``decoupled``: the
    own positive leaves the denominator, ``-weight * z_own + LSE(negatives)`` (True), or one
    LSE per block, summed ("blocks"); no negatives: 0 for that LSE.
    """
    if decoupled:
        negatives = ~own & ~same
        groups = [negatives] if decoupled is True else [negatives & (block == b) for b in range(6)]
        lse = sum(_lse(z[g]) for g in groups if g.any())
        return lse - weight * float(z[own][0]), 1
    if positives == "own":
        return _lse(z[~same]) - float(z[own][0]), 1
    is_positive = own | same
    count = int(is_positive.sum())
    if count == 0:
        return 0.0, 0
    if positives == "supcon":
        return _lse(z) - float(z[is_positive].mean()), count
    if positives == "pairs":
        log_negatives = _lse(z[~is_positive])
        return sum(_softplus(log_negatives - zp) for zp in z[is_positive]), count
    raise ValueError(positives)


def vmf_weights(anchors, keys, sigma):
    """DCLW's weights: 2 - N softmax(s_ii / sigma), s_ii = <anchor_i, key_i>."""
    if sigma is None:
        return np.ones(len(anchors))
    s = np.einsum("nd,nd->n", anchors, keys) / sigma
    e = np.exp(s - s.max())
    return 2 - len(anchors) * e / e.sum()


def _hard(hardness_mode, block, is_own, mine):
    """Whether hardness weighs a candidate of the query direction: ``block`` 0 keys, 1 other
    anchors, 2 explicit negatives; ``mine``: a negative is the row's own (paired) or not."""
    if block not in (0, 2) or is_own:  # the query's keys and negatives only
        return False
    if hardness_mode == "in_batch_negatives":
        return block == 0 or not mine
    if hardness_mode == "hard_negatives":
        return block == 2 and mine
    return hardness_mode == "all_negatives"


def _key_candidates(i, keys, anchors, negatives, labels, negative_labels, joint, share):
    """Row i's candidates scored against keys[i] (see ``_direction``): blocks 3 (the anchors),
    4 (the other keys) and 5 (shared paired negatives: the other rows')."""
    n, out = len(keys), []
    label = (lambda j: None) if labels is None else (lambda j: labels[j])
    if "key_to_query" in joint:
        out += [(anchors[j], False, label(j), 3, False) for j in range(n)]
    if "key_to_key" in joint:
        out += [(keys[j], False, label(j), 4, False) for j in range(n) if j != i]
        if negatives is not None and share:
            for g in (g for g in range(len(negatives)) if g != i):
                nl = [None] * negatives.shape[1] if negative_labels is None else negative_labels[g]
                out += [(v, False, lab, 5, False) for v, lab in zip(negatives[g], nl)]
    return out


def _candidates(i, arrays, labels, negative_labels, *, in_batch, share_negatives, joint):
    """Row i's candidates, in order: (scored by, vector, own positive?, label, block, own
    negative?). ``arrays``: (anchors, keys, same view or None, negatives or None)."""
    anchors, keys, same_view, negatives = arrays
    n, out = len(anchors), []
    no_label = [None] * n
    if in_batch:
        key_labels = no_label if labels is None else labels
        out += [(keys[j], j == i, key_labels[j], 0, False) for j in range(n)]
    else:
        out.append((keys[i], True, None, 0, False))
    if same_view is not None:  # the anchor itself is hidden
        view_labels = no_label if labels is None else labels
        out += [(same_view[j], False, view_labels[j], 1, False) for j in range(n) if j != i]
    if negatives is not None:
        groups = range(len(negatives)) if share_negatives else [None if negatives.ndim == 2 else i]
        for g in groups:
            row_negatives = negatives if g is None else negatives[g]
            row_labels = [None] * len(row_negatives)
            if negative_labels is not None:
                row_labels = negative_labels if g is None else negative_labels[g]
            out += [(v, False, lab, 2, g == i) for v, lab in zip(row_negatives, row_labels)]
    extra = _key_candidates(
        i, keys, anchors, negatives, labels, negative_labels, joint, share_negatives
    )
    return [(anchors[i], *c) for c in out] + [(keys[i], *c) for c in extra]


def _direction(
    anchors,
    keys,
    same_view,
    negatives,
    labels,
    negative_labels,
    *,
    in_batch,
    t,
    positives,
    decoupled=False,
    decoupled_sigma=None,
    share_negatives=False,
    hardness=None,
    joint=(),
    guide=None,
    row_loss=None,
):
    """Per-anchor losses and pair counts of one direction (anchor i's own positive: keys[i]).

    ``share_negatives``: paired negatives (N, M, D) are every row's candidates, row j's M its
    own; ``hardness``: (mode, alpha) adds alpha * s to the chosen negatives' logits; ``joint``:
    the key-anchored candidates of row i ("key_to_query": keys[i] against every anchor,
    "key_to_key": against the other keys and the other rows' negatives); ``guide``:
    (margin, strategy, the guide's arrays as ``anchors, keys, same_view, negatives``): a
    candidate whose guide similarity is above the own pair's, less the margin, is dropped.
    ``row_loss``: replaces ``_row_loss``, called as ``row_loss(i, z, own, same, block, weight,
    kept)`` (``kept``: the indices of the candidates the guide kept, None without a guide).
    """
    n = len(anchors)
    rows, pairs = np.zeros(n), np.zeros(n, dtype=int)
    weights = vmf_weights(anchors, keys, decoupled_sigma)
    common = {"in_batch": in_batch, "share_negatives": share_negatives, "joint": joint}
    for i in range(n):
        arrays = (anchors, keys, same_view, negatives)
        candidates = _candidates(i, arrays, labels, negative_labels, **common)
        kept = None
        if guide is not None:
            margin, strategy, guides = guide
            g = np.array(
                [a @ v for a, v, *_ in _candidates(i, guides, labels, negative_labels, **common)]
            )
            own_g = float(guides[0][i] @ guides[1][i])
            threshold = own_g - (margin if strategy == "absolute" else abs(own_g) * margin)
            kept = [j for j, (c, x) in enumerate(zip(candidates, g)) if c[2] or not x > threshold]
            candidates = [candidates[j] for j in kept]
        z = np.array([float(a @ v) / t for a, v, *_ in candidates])
        if hardness is not None:
            boost = [_hard(hardness[0], b, own, mine) for *_, own, _, b, mine in candidates]
            z = np.where(boost, z + hardness[1] * z * t, z)
        own = np.array([c[2] for c in candidates])
        same = np.array(
            [
                not is_own and labels is not None and lab is not None and lab == labels[i]
                for _, _, is_own, lab, _, _ in candidates
            ]
        )
        block = np.array([c[4] for c in candidates])
        if row_loss is not None:
            rows[i], pairs[i] = row_loss(i, z, own, same, block, weights[i], kept)
        else:
            rows[i], pairs[i] = _row_loss(z, own, same, positives, decoupled, block, weights[i])
    return rows, pairs


def recipe_rows(
    query,
    positive_key,
    negative_keys=None,
    *,
    temperature=0.1,
    negative_mode="unpaired",
    labels=None,
    negative_labels=None,
    positives="own",
    in_batch_negatives=None,
    same_view_negatives=False,
    symmetric=False,
    normalize=True,
    decoupled=False,
    decoupled_sigma=None,
    share_negatives=False,
    hardness_mode=None,
    hardness_strength=0.0,
    joint_directions=(),
    guide_margin=None,
    guide_strategy="absolute",
    guide=None,
    row_loss=None,
):
    """Per-row losses (N,) and the total number of positive pairs, in float64.

    With ``symmetric`` each row is the mean of its two directions, and the pair count is the
    mean of theirs, so that ``rows.sum() / pairs`` is (all pairs' terms) / (number of pairs).
    ``row_loss``: each row's loss from its candidates, ``row_loss(direction, i, z, own, same,
    block, weight, kept)`` (direction 0 query -> key, 1 key -> query; see ``_direction``).
    """
    q, k = (np.asarray(a, dtype=np.float64) for a in (query, positive_key))
    neg = None if negative_keys is None else np.asarray(negative_keys, dtype=np.float64)
    if normalize:
        q, k = normalise(q), normalise(k)
        neg = None if neg is None else normalise(neg)
    if neg is not None and neg.ndim != (3 if negative_mode == "paired" else 2):
        raise ValueError("negative_keys does not fit negative_mode")
    labels = None if labels is None else np.asarray(labels)
    negative_labels = None if negative_labels is None else np.asarray(negative_labels)
    in_batch = neg is None if in_batch_negatives is None else bool(in_batch_negatives)
    common = {
        "t": temperature,
        "positives": positives,
        "decoupled": decoupled,
        "decoupled_sigma": decoupled_sigma,
    }
    hardness = None if hardness_mode is None else (hardness_mode, hardness_strength)
    gq, gk, gneg = q, k, neg  # without a guide's arrays the model guides itself
    if guide is not None:
        gq, gk, *rest = (normalise(np.asarray(x, dtype=np.float64)) for x in guide)
        gneg = rest[0] if rest else None
    view, back_view = (gq, gk) if same_view_negatives else (None, None)
    forth = back = None
    if guide_margin is not None:
        forth = (guide_margin, guide_strategy, (gq, gk, view, gneg))
        back = (guide_margin, guide_strategy, (gk, gq, back_view, None))
    rows, pairs = _direction(
        q,
        k,
        q if same_view_negatives else None,
        neg,
        labels,
        negative_labels,
        in_batch=in_batch,
        share_negatives=share_negatives,
        hardness=hardness,
        joint=joint_directions,
        guide=forth,
        row_loss=None if row_loss is None else functools.partial(row_loss, 0),
        **common,
    )
    if not symmetric:
        return rows, int(pairs.sum())
    # key -> query: the queries are the key block, the other keys the same view; no negatives
    back_rows, back_pairs = _direction(
        k,
        q,
        k if same_view_negatives else None,
        None,
        labels,
        None,
        in_batch=True,
        guide=back,
        row_loss=None if row_loss is None else functools.partial(row_loss, 1),
        **common,
    )
    return (rows + back_rows) / 2, (int(pairs.sum()) + int(back_pairs.sum())) / 2


def _reduce(rows, pairs, reduction, positives, rows_counted):
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return np.asarray(total)
    if positives == "pairs":
        return np.asarray(total / pairs if pairs else 0.0)
    return np.asarray(total / rows_counted if rows_counted else 0.0)


def recipe_loss(query, positive_key, negative_keys=None, *, reduction="mean", **options):
    """``recipe_rows`` reduced: "none", "sum", or "mean" (over pairs for positives="pairs")."""
    rows, pairs = recipe_rows(query, positive_key, negative_keys, **options)
    return _reduce(rows, pairs, reduction, options.get("positives", "own"), len(rows))


def supervised_rows(
    embeddings,
    labels,
    temperature=0.1,
    positives="supcon",
    normalize=True,
    references=None,
    reference_labels=None,
):
    """Per-row losses (B,), the number of positive pairs and of rows that have a positive.
    Candidates: the other rows, or all ``references`` with their labels."""
    x = np.asarray(embeddings, dtype=np.float64)
    refs = None if references is None else np.asarray(references, dtype=np.float64)
    if normalize:
        x = normalise(x)
        refs = None if refs is None else normalise(refs)
    labels = np.asarray(labels)
    rows, pairs = np.zeros(len(x)), np.zeros(len(x), dtype=int)
    for i in range(len(x)):
        if refs is None:
            others = np.arange(len(x)) != i
            candidates, candidate_labels = x[others], labels[others]
        else:
            candidates, candidate_labels = refs, np.asarray(reference_labels)
        z = candidates @ x[i] / temperature
        same = candidate_labels == labels[i]
        rows[i], pairs[i] = _row_loss(z, np.zeros_like(same), same, positives)
    return rows, int(pairs.sum()), int((pairs > 0).sum())


def supervised_loss(
    embeddings,
    labels,
    temperature=0.1,
    positives="supcon",
    reduction="mean",
    normalize=True,
    references=None,
    reference_labels=None,
):
    """``supervised_rows`` reduced; rows without a positive give 0 and are left out of "mean"."""
    rows, pairs, anchors = supervised_rows(
        embeddings, labels, temperature, positives, normalize, references, reference_labels
    )
    return _reduce(rows, pairs, reduction, positives, anchors)
