"""What a call scores: the names of its arrays, its static options, its directions (anchors
against blocks of candidate cells), and each direction's arrays assembled as a
:class:`._cells.Problem`."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._arrays import device
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


class Direction(NamedTuple):
    """One anchors-against-candidates problem, by array name. ``shared`` lists the blocks of
    shared candidates with their role: "own" (anchor i's own positive is its row offset + i),
    "self" (its row offset + i is anchor i itself, hidden), "grouped" (paired negatives
    (N, M, D), shared: row offset + i's M are anchor i's own) or "plain"."""

    anchor: str
    positive: str | None  # an own positive outside the shared blocks: row i for anchor i
    shared: tuple[tuple[str, str], ...]
    paired: str | None = None  # (N, M, D) candidates of each anchor

    def one_positive(self) -> tuple[str, str, str] | None:
        """Anchor, positive and candidates by name where each row has one positive and one
        block of candidates (the seed's modes), else None. In-batch, the positive is named by
        the keys' local name and found among the candidates at the row offset."""
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
    if config.supervised:
        return (Direction(QUERY, None, ((queries, "self"),)),)
    shared = []
    if config.in_batch:
        shared.append((keys, "own"))
    if config.same_view:
        shared.append((queries, "self"))
    if config.mode == "unpaired":
        shared.append((ALL_NEGATIVES if gathered else NEGATIVES, "plain"))
    if config.share:
        shared.append((ALL_NEGATIVES if gathered else NEGATIVES, "grouped"))
    paired = NEGATIVES if config.mode == "paired" and not config.share else None
    out = [Direction(QUERY, None if config.in_batch else KEY, tuple(shared), paired)]
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
    hardness weighting's factor holds."""
    y: Any = labels.get(LABELS) if config.labelled else None
    parts, part_labels, own, hide, twin, start, starts = [], [], None, None, None, 0, []
    rules = _HARD[config.hardness[0]] if config.hardness and d.anchor == QUERY else {}
    hard = []
    for name, role in d.shared:
        block = units[name]
        size = 0
        if role == "grouped":  # (N, M, D): row i's own M in a row
            size = block.shape[1]
            block = xp.reshape(block, (block.shape[0] * size, block.shape[2]))
        if role in rules:
            hard.append((start, start + block.shape[0], size, offset, rules[role]))
        if role == "own" and apart:
            twin = offset + start
        elif role == "own":
            own = offset + start
        elif role == "self":
            hide = offset + start
        parts.append(block)
        lab = labels.get(_labels_of(name))
        if role == "grouped" and lab is not None:
            lab = xp.reshape(lab, (block.shape[0],))
        part_labels.append(lab)
        starts.append(start)
        start += block.shape[0]
    shared = None if not parts else parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
    shared_labels = labelled = None
    if y is not None and any(lab is not None for lab in part_labels):
        filled, flags = [], []
        for block, lab in zip(parts, part_labels):
            rows, where = block.shape[0], device(block)
            filled.append(lab if lab is not None else xp.zeros(rows, dtype=y.dtype, device=where))
            flags.append(xp.full(rows, lab is not None, dtype=xp.bool, device=where))
        shared_labels = filled[0] if len(filled) == 1 else xp.concat(filled, axis=0)
        if any(lab is None for lab in part_labels):
            labelled = xp.concat(flags, axis=0)
    paired = None if d.paired is None else units[d.paired]
    paired_labels = None if y is None or paired is None else labels.get(NEGATIVE_LABELS)
    positive = None if d.positive is None else units[d.positive]
    if twin is not None:
        positive = units[d.own_positive() or ""]
    factor = None
    if rules:  # z + alpha * s, with s = z / scale, on the cells that the rules choose
        factor = 1.0 + config.hardness[1] / scale  # type: ignore[index]
    weight = None
    if config.decoupled_sigma is not None and d.own_positive() is not None:
        own_rows = units[d.own_positive() or ""]
        weight = vmf_weights(xp, units[d.anchor], own_rows, config.decoupled_sigma)
    return Problem(
        units[d.anchor],
        shared,
        paired,
        y,
        shared_labels,
        labelled,
        paired_labels,
        own,
        hide,
        twin,
        positive,
        config.positives,
        config.decoupled,
        tuple(starts) if config.decoupled == "blocks" else None,
        weight,
        factor,
        (tuple(hard), "paired" in rules) if factor is not None else None,
    )
