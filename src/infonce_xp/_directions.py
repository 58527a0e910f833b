"""What a call scores: the names of its arrays, its static options, its directions (anchors
against blocks of candidate cells), and each direction's arrays assembled as a
:class:`._cells.Problem`."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ._arrays import device, row_dot
from ._cells import Problem, vmf_weights
from ._typing import Array, Namespace

# Names of the arrays a call may hold. The ``all_*`` ones are gathered from every worker; the
# labels are integer arrays that get no gradient.
QUERY, KEY, NEGATIVES = "query", "positive_key", "negative_keys"
ALL_QUERIES, ALL_KEYS, ALL_NEGATIVES = "all_queries", "all_keys", "all_negatives"
LABELS, NEGATIVE_LABELS = "labels", "negative_labels"
ALL_LABELS, ALL_NEGATIVE_LABELS = "all_labels", "all_negative_labels"
LABEL_NAMES = (LABELS, NEGATIVE_LABELS, ALL_LABELS, ALL_NEGATIVE_LABELS)
# The gathered arrays and the local ones whose gradient theirs is.
HOME = {ALL_KEYS: KEY, ALL_QUERIES: QUERY, ALL_NEGATIVES: NEGATIVES}
# A guide model's embeddings of the same rows (false-negative masking): floating arrays that
# get no gradient, by the name of the array they guide.
GUIDE_OF = {
    name: "guide_" + name for name in (QUERY, KEY, NEGATIVES, ALL_QUERIES, ALL_KEYS, ALL_NEGATIVES)
}
GUIDE_NAMES = tuple(GUIDE_OF.values())
SAMPLE_WEIGHT = "sample_weight"  # (N,): each row's weight in the reduction
DATA_NAMES = (*LABEL_NAMES, SAMPLE_WEIGHT)  # the arrays that are not embeddings
CONSTANT_NAMES = DATA_NAMES + GUIDE_NAMES  # the arrays that never get a gradient
BIAS = "bias"  # the sigmoid loss's bias as a 0-D array (a number is in the Config)
NOT_EMBEDDINGS = (*DATA_NAMES, BIAS)  # the arrays that are not rows to normalise and score


class Config(NamedTuple):
    """The static options of a call (hashable: a ``jax.custom_vjp`` static argument)."""

    mode: str  # the explicit negatives: "unpaired", "paired", or "in-batch" (none)
    symmetric: bool = False
    normalize: bool = True
    chunk_size: int | None = None
    positives: str = "own"
    in_batch: bool = True  # the keys are candidates
    same_view: bool = False  # the other anchors are candidates
    labelled: bool = False  # labels are given
    supervised: bool = False  # one set: anchors against each other, no own positive
    gathered: bool = False  # every worker's candidates are gathered
    share: bool = False  # paired negatives shared by every query, each row's own known
    hardness: tuple[str, float] | None = None  # (hardness_mode, hardness_strength), or None
    decoupled: bool | str = False  # the own positive out of the denominator (see Options)
    decoupled_sigma: float | None = None  # DCLW's weights of the positive term
    joint: tuple[str, ...] = ()  # the key-anchored directions joining each query's row
    guided: tuple[float, str, bool] | None = None  # false-negative masking: (margin,
    # strategy, whether by a guide's embeddings rather than the model's own similarity)
    target: tuple[float, float | None] | None = None  # soft targets: (label smoothing, the
    # teacher's scale or None: the guide arrays are then a teacher's), or None
    margin: float = 0.0  # the additive margin on the positives' similarities
    debias: tuple[float, float] | None = None  # (debiased_prior, hardness_beta), or None
    sigmoid: bool = False  # the sigmoid loss: each cell scored on its own (see _siglip)
    bias: float | None = None  # its bias when a number (None: the array named BIAS)
    ring: bool = False  # the keys passed round the workers (not gathered; see _ring)

    def cells(self, anchor: str) -> bool:
        """Whether the rows anchored at ``anchor`` need the cells' rules (:mod:`._cells`)
        rather than the one-positive kernel."""
        hardened = self.hardness is not None and anchor == QUERY
        rules = self.labelled or self.decoupled or self.guided or hardened or self.margin
        return bool(rules or self.sigmoid or self.target is not None or self.debias is not None)


class Direction(NamedTuple):
    """One anchors-against-candidates problem, by array name. ``shared`` lists the blocks of
    shared candidates with their role: "own" (anchor i's own positive is its row offset + i),
    "self" (its row offset + i is anchor i itself, hidden), "grouped" (paired negatives
    (N, M, D), shared: row offset + i's M are anchor i's own), "grouped-self" (the same, the
    own M hidden) or "plain". ``second_shared``: blocks that join row i scored against row i
    of ``second`` instead of the anchor (the joint directions: its key's candidates)."""

    anchor: str
    positive: str | None  # an own positive outside the shared blocks: row i for anchor i
    shared: tuple[tuple[str, str], ...]
    paired: str | None = None  # (N, M, D) candidates of each anchor
    second: str | None = None
    second_shared: tuple[tuple[str, str], ...] = ()

    def one_positive(self) -> tuple[str, str, str] | None:
        """Anchor, positive and candidates by name where each row has one positive and one
        block of candidates (the seed's modes), else None. In-batch, the positive is named by
        the keys' local name and found among the candidates at the row offset."""
        if self.second is not None:
            return None
        if self.positive is not None:
            blocks = [name for name, role in self.shared if role == "plain"]
            blocks += [] if self.paired is None else [self.paired]
            if len(blocks) == 1 == len(self.shared) + (self.paired is not None):
                return self.anchor, self.positive, blocks[0]
            return None
        if self.paired is None and len(self.shared) == 1 and self.shared[0][1] == "own":
            keys = self.shared[0][0]
            return self.anchor, _LOCAL[keys], keys
        return None

    def own_positive(self) -> str | None:
        """The name of the array whose row i is anchor i's own positive (the local one where
        the positives are among gathered candidates), or None."""
        if self.positive is not None:
            return self.positive
        return next((_LOCAL[name] for name, role in self.shared if role == "own"), None)


_LOCAL = {ALL_KEYS: KEY, ALL_QUERIES: QUERY, KEY: KEY, QUERY: QUERY}


def directions(config: Config) -> tuple[Direction, ...]:
    """The query->key (and, symmetric, key->query) problems whose mean is the loss."""
    gathered = config.gathered
    keys = ALL_KEYS if gathered else KEY
    queries = ALL_QUERIES if gathered else QUERY
    if config.supervised and config.mode == "unpaired":  # against a reference set
        return (Direction(QUERY, None, ((ALL_NEGATIVES if gathered else NEGATIVES, "plain"),)),)
    if config.supervised:
        return (Direction(QUERY, None, ((queries, "self"),)),)
    shared = []
    if config.in_batch:
        shared.append((keys, "own"))
    if config.same_view:
        shared.append((queries, "self"))
    if config.mode == "unpaired":
        shared.append((ALL_NEGATIVES if gathered else NEGATIVES, "plain"))
    negatives = ALL_NEGATIVES if gathered else NEGATIVES
    if config.share:
        shared.append((negatives, "grouped"))
    paired = NEGATIVES if config.mode == "paired" and not config.share else None
    second = []
    if "key_to_query" in config.joint:
        second.append((queries, "plain"))
    if "key_to_key" in config.joint:
        second.append((keys, "self"))
        if config.share:
            second.append((negatives, "grouped-self"))
    out = [
        Direction(
            QUERY,
            None if config.in_batch else KEY,
            tuple(shared),
            paired,
            KEY if second else None,
            tuple(second),
        )
    ]
    if config.symmetric:
        back = [(queries, "own")] + ([(keys, "self")] if config.same_view else [])
        out.append(Direction(KEY, None, tuple(back)))
    return tuple(out)


def _labels_of(name: str) -> str:
    """The labels that go with the candidates ``name``."""
    if name in (ALL_KEYS, ALL_QUERIES):
        return ALL_LABELS
    if name == ALL_NEGATIVES:
        return ALL_NEGATIVE_LABELS
    return NEGATIVE_LABELS if name == NEGATIVES else LABELS


# Which cells of a block hardness weighs, by hardness_mode and the block's role: "all" its
# cells, "others" all but the row's own group, "own" the row's own group, absent: none.
_HARD = {
    "in_batch_negatives": {"own": "all", "grouped": "others", "plain": "all"},
    "hard_negatives": {"grouped": "own", "paired": "all"},
    "all_negatives": {"own": "all", "grouped": "all", "plain": "all", "paired": "all"},
}


class _Blocks(NamedTuple):
    """Where the cells of a direction's shared blocks are, in order, as ``problem`` reads them."""

    labels: list[Any]  # each block's (a grouped block's as its N * M rows), or None
    own: Any  # the shared column of anchor 0's own positive, or None (see Problem)
    hide: Any  # the shared column of anchor 0 itself (same view), or None
    twin: Any  # the own positive's column when it is also a column of its own, or None
    unseen: tuple[Any, ...]  # further hidden cells (see Problem)
    starts: tuple[int, ...]  # each block's first column
    hard: tuple[Any, ...]  # hardness's rules (see Problem)


def _roles(d: Direction) -> list[tuple[str, str, int]]:
    """The shared blocks by name and role, with the anchor that scores them (0, 1: second)."""
    return [(n, r, 0) for n, r in d.shared] + [(n, r, 1) for n, r in d.second_shared]


def _blocks(
    xp: Namespace,
    config: Config,
    d: Direction,
    units: dict[str, Array],
    labels: dict[str, Array],
    offset: Any,
    apart: bool,
) -> _Blocks:
    """The shared blocks' labels (a grouped block (N, M, D) as its N * M rows), and where their
    own positive, hidden and hard cells are."""
    rules = _HARD[config.hardness[0]] if config.hardness and d.anchor == QUERY else {}
    labelled, starts, hard, unseen = [], [], [], []
    own = hide = twin = None
    start = 0
    for name, role, side in _roles(d):
        shape, lab = units[name].shape, labels.get(_labels_of(name))
        size, stop = shape[1] if len(shape) == 3 else 1, start + math.prod(shape[:-1])
        if lab is not None and role.startswith("grouped"):
            lab = xp.reshape(lab, (stop - start,))
        if role in rules and side == 0:
            hard.append((start, stop, size, offset, rules[role]))
        if role == "own":
            twin, own = (offset + start, None) if apart else (None, offset + start)
        elif role == "self" and hide is None:
            hide = offset + start
        elif role in ("self", "grouped-self"):
            unseen.append((start, stop, size, offset))
        labelled.append(lab)
        starts.append(start)
        start = stop
    return _Blocks(labelled, own, hide, twin, tuple(unseen), tuple(starts), tuple(hard))


def _laid_out(xp: Namespace, d: Direction, get: Any, positive: str | None) -> tuple[Any, ...]:
    """A direction's arrays from ``get(name)``: the anchor, the shared blocks (grouped ones as
    rows), the paired block and the own positives' column (``positive``, or None); with a
    second anchor, widened (see ``_sides``) to score row i against both with one product."""
    anchor = get(d.anchor)
    width = anchor.shape[-1]

    def side(x: Array, which: int) -> Array:
        return x if d.second is None else _sides(xp, x, which, width)

    parts = []
    for name, role, which in _roles(d):
        block = get(name)
        if role.startswith("grouped"):  # (N, M, D): row i's own M in a row
            block = xp.reshape(block, (block.shape[0] * block.shape[1], block.shape[2]))
        parts.append(side(block, which))
    paired = None if d.paired is None else side(get(d.paired), 0)
    own = None if positive is None else side(get(positive), 0)
    if d.second is not None:
        anchor = xp.concat([anchor, get(d.second)], axis=-1)
    return anchor, parts, paired, own


def _joined(xp: Namespace, y: Any, parts: list[Array], blocks: _Blocks) -> tuple[Any, Any, Any]:
    """The shared blocks as one array, with their labels and which of them carry one."""
    shared = _concat(xp, parts)
    if y is None or all(lab is None for lab in blocks.labels):
        return shared, None, None
    filled, flags = [], []
    for block, lab in zip(parts, blocks.labels):
        rows, where = block.shape[0], device(block)
        filled.append(lab if lab is not None else xp.zeros(rows, dtype=y.dtype, device=where))
        flags.append(xp.full(rows, lab is not None, dtype=xp.bool, device=where))
    shared_labels = filled[0] if len(filled) == 1 else xp.concat(filled, axis=0)
    labelled = None
    if any(lab is None for lab in blocks.labels):
        labelled = xp.concat(flags, axis=0)
    return shared, shared_labels, labelled


def _concat(xp: Namespace, parts: list[Array]) -> Any:
    return None if not parts else parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def _sides(xp: Namespace, x: Array, side: int, width: int) -> Array:
    """``x`` widened to ``2 * width`` features, its own in the first half (``side`` 0) or the
    second: the joint directions score row i against two anchors with one product, that of
    the anchors side by side (``[a_i, b_i] . [c, 0] = a_i . c``)."""
    zeros = xp.zeros((*x.shape[:-1], width), dtype=x.dtype, device=device(x))
    return xp.concat([x, zeros] if side == 0 else [zeros, x], axis=-1)


def _guides(
    xp: Namespace, config: Config, d: Direction, units: dict[str, Array], scale: Any
) -> dict[str, Any]:
    """False-negative masking's fields of a Problem: each row's threshold, and the guide's
    arrays laid out as the direction's (grouped, widened); without a guide the threshold is
    in logits (the model's own similarities, times the scale)."""
    margin, strategy, by_guide = config.guided  # type: ignore[misc]
    own = d.own_positive()
    if own is None:
        return {}
    g = GUIDE_OF if by_guide else {name: name for name in units}
    similarity = row_dot(xp, units[g[d.anchor]], units[g[own]])
    if not by_guide:  # in logits: the similarity, and an absolute margin, times the scale
        similarity = similarity * scale
    if strategy == "absolute":
        lower = margin if by_guide else margin * scale
    else:
        lower = xp.abs(similarity) * margin
    out: dict[str, Any] = {"threshold": similarity - lower}
    if not by_guide:
        return out
    return out | _companion(xp, d, units, None, 1.0)


def _companion(
    xp: Namespace, d: Direction, units: dict[str, Array], positive: Any, factor: Any
) -> dict[str, Any]:
    """A guide's or a teacher's arrays laid out as the direction's (see ``_laid_out``), as a
    Problem's ``guide_*`` fields; its anchors times ``factor``."""
    anchor, parts, paired, own = _laid_out(xp, d, lambda name: units[GUIDE_OF[name]], positive)
    return {
        "guide_anchor": anchor if factor == 1.0 else anchor * factor,
        "guide_shared": _concat(xp, parts),
        "guide_paired": paired,
        "guide_positive": own,
    }


def problem(
    xp: Namespace,
    config: Config,
    d: Direction,
    units: dict[str, Array],
    labels: dict[str, Array],
    offset: Any,
    apart: bool = False,
    scale: Any = 1.0,
) -> Problem:
    """The blocks of a direction as one :class:`._cells.Problem`: shared blocks concatenated
    (with their labels, and which of them carry one), paired and own positive as they are.
    ``apart``: an own positive among the shared candidates is a column of its own too, and
    hidden among them (``Problem.twin``). ``scale``: the inverse temperature, which the
    hardness weighting's factor holds. With a second anchor, every array is widened (see
    ``_sides``)."""
    y: Any = labels.get(LABELS) if config.labelled else None
    b = _blocks(xp, config, d, units, labels, offset, apart)
    positive_name = d.positive if b.twin is None else d.own_positive()
    anchor, parts, paired, positive = _laid_out(xp, d, units.__getitem__, positive_name)
    shared, shared_labels, labelled = _joined(xp, y, parts, b)
    paired_labels = None if y is None or paired is None else labels.get(NEGATIVE_LABELS)
    factor = hard = None
    if config.hardness is not None and d.anchor == QUERY:
        # z + alpha * s, with s = z / scale, on the cells that the rules choose
        factor = 1.0 + config.hardness[1] / scale
        hard = (b.hard, "paired" in _HARD[config.hardness[0]])
    weight = None
    if config.decoupled_sigma is not None and d.own_positive() is not None:
        own_rows = units[d.own_positive() or ""]
        weight = vmf_weights(xp, units[d.anchor], own_rows, config.decoupled_sigma)
    guides = _guides(xp, config, d, units, scale) if config.guided is not None else {}
    if config.target is not None and config.target[1] is not None:  # a teacher's arrays
        # its anchors times its scale: its products are its logits
        guides = _companion(xp, d, units, positive_name, config.target[1])
    smoothing, teacher = config.target or (0.0, None)
    margin = None if not config.margin else (config.margin * scale, config.margin)
    debias = None if config.debias is None else (*config.debias, -scale)
    bias = config.bias if config.sigmoid else None  # a number, or the array (compute dtype)
    if config.sigmoid and bias is None:
        bias = xp.astype(labels[BIAS], anchor.dtype)
    return Problem(
        anchor,
        shared,
        paired,
        y,
        shared_labels,
        labelled,
        paired_labels,
        b.own,
        b.hide,
        b.twin,
        positive,
        config.positives,
        config.decoupled,
        b.starts if config.decoupled == "blocks" else None,
        weight,
        factor,
        hard,
        b.unseen,
        **guides,
        smoothing=smoothing,
        teacher=teacher,
        margin=margin,
        debias=debias,
        sigmoid=bias,
    )


def gradients(
    xp: Namespace,
    d: Direction,
    units: dict[str, Array],
    g_anchor: Array,
    blocks: tuple[Any, Any, Any],
    own: bool,
) -> list[tuple[str, Any]]:
    """The gradients of a direction's arrays by name from those of its :func:`problem`'s
    anchor and blocks (shared, paired, own positive; ``own``: the positive was a column of
    its own): the shared blocks cut apart, grouped ones reshaped, widened ones halved."""
    width = units[d.anchor].shape[-1]

    def half(g: Array, side: int) -> Array:
        if d.second is None:
            return g
        return g[..., :width] if side == 0 else g[..., width:]

    out = [(d.anchor, half(g_anchor, 0))]
    if d.second is not None:
        out.append((d.second, half(g_anchor, 1)))
    g_shared, g_paired, g_positive = blocks
    start, several = 0, len(d.shared) + len(d.second_shared) > 1
    sides = [(name, 0) for name, _ in d.shared] + [(name, 1) for name, _ in d.second_shared]
    for name, side in sides:
        shape = units[name].shape  # (N, M, D) for paired negatives that are shared
        rows = math.prod(shape[:-1])
        g = half(g_shared[start : start + rows, ...] if several else g_shared, side)
        out.append((name, g if len(shape) == 2 else xp.reshape(g, shape)))
        start += rows
    if d.paired is not None:
        out.append((d.paired, half(g_paired, 0)))
    if own:
        out.append((d.own_positive() or "", half(g_positive, 0)))
    return out
