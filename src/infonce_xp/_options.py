"""The options of a loss, validated once.

A new option is one field of :class:`Options`: its default, its check and its doc paragraph
(``metadata["doc"]``). The public functions and classes take it as a keyword and show it in
their docstrings through :mod:`._docs`, and the engine reads it from the ``Options`` object;
nothing else lists the options.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import field
from typing import Any

from ._arrays import is_array_api_obj
from ._checks import check_choice, check_flag, check_rows, check_temperature, describe
from ._namespaces import is_numpy_value
from ._typing import Array, Gather, NegativeMode, Positives, Reduction

REDUCTIONS = ("mean", "sum", "none")
NEGATIVE_MODES = ("unpaired", "paired")
POSITIVES = ("own", "supcon", "pairs")
DECOUPLED = (False, True, "blocks")
JOINT = ("key_to_query", "key_to_key")
HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")
# The checked options of recent function calls, by their arguments (Options are frozen): a loop
# that calls info_nce with the same options checks them once.
_RECENT: dict[Any, Options] = {}


def _about(doc: str, *, seed: bool = False) -> dict[str, Any]:
    """A field's metadata: its doc paragraph, and whether it is one of the seed's three
    (positional) options."""
    return {"doc": doc.strip("\n"), "seed": seed}


@dataclasses.dataclass(frozen=True, eq=False)
class Options:
    """Everything about a loss that is not data, checked once at construction.

    The seed's three options come first and may be given by position; the rest are keyword-only
    in every public function and class.
    """

    temperature: float | Array = field(
        default=0.1,
        metadata=_about(
            """
temperature : float or 0-D array, default 0.1
    Logits are divided by the temperature. A 0-D array of the inputs' namespace (a torch
    ``Parameter``, a JAX array) receives a gradient.""",
            seed=True,
        ),
    )
    reduction: Reduction = field(
        default="mean",
        metadata=_about(
            """
reduction : {"mean", "sum", "none"}, default "mean"
    How the per-query losses are reduced; "none" returns shape (N,).""",
            seed=True,
        ),
    )
    negative_mode: NegativeMode = field(
        default="unpaired",
        metadata=_about(
            """
negative_mode : {"unpaired", "paired"}, default "unpaired"
    How ``negative_keys`` is read (ignored without them).""",
            seed=True,
        ),
    )
    positives: Positives = field(
        default="own",
        metadata=_about(
            """
positives : {"own", "supcon", "pairs"}, default "own"
    Which candidates count as positives once ``labels`` are given (without labels the three
    give the seed's numbers). "own": only each row's own positive; candidates of its class
    are ignored, i.e. dropped from the denominator (duplicates, false negatives). "supcon":
    they are positives too, and a row's loss is the log-sum-exp over its candidates minus
    the mean logit of its positives (SupCon's L_out). "pairs": each positive is a term of its
    own, ``softplus(LSE(negatives) - logit)``, so the other positives are not in its
    denominator (pytorch-metric-learning's NTXentLoss, optax's ntxent); "mean" then averages
    over the pairs and "none" gives each row's sum."""
        ),
    )
    in_batch_negatives: bool | None = field(
        default=None,
        metadata=_about(
            """
in_batch_negatives : bool, optional
    Whether the positive keys of the batch are candidates. None (the default) is the seed:
    they are without ``negative_keys`` and are not with them. True with ``negative_keys``
    scores each query against the keys and the explicit negatives (hard negatives, as
    sentence-transformers' MultipleNegativesRankingLoss and DPR do)."""
        ),
    )
    same_view_negatives: bool = field(
        default=False,
        metadata=_about(
            """
same_view_negatives : bool, default False
    Also score each query against the other queries (never itself) and, with
    ``symmetric=True``, each key against the other keys: SimCLR's NT-Xent."""
        ),
    )
    symmetric: bool = field(
        default=False,
        metadata=_about(
            """
symmetric : bool, default False
    Average the query->key and key->query losses (the CLIP loss). The key->query direction
    has no explicit negatives: with ``negative_keys`` it needs ``in_batch_negatives=True``,
    and the negatives score the query->key direction only."""
        ),
    )
    normalize: bool = field(
        default=True,
        metadata=_about(
            """
normalize : bool, default True
    L2-normalise every input row first (cosine similarity). False uses raw dot products."""
        ),
    )
    chunk_size: int | None = field(
        default=None,
        metadata=_about(
            """
chunk_size : int, optional
    Stream the computation over blocks of at most this many queries and keys, forward and
    backward, so that no (N, M) matrix is allocated. None (the default) computes all
    logits at once, which is faster while they fit in memory."""
        ),
    )
    joint_directions: tuple[str, ...] = field(
        default=(),
        metadata=_about(
            """
joint_directions : tuple of {"key_to_query", "key_to_key"}, default ()
    Cells scored against each pair's key that join its query's row, in one log-sum-exp
    (GTE's improved contrastive loss; sentence-transformers' ``partition_mode="joint"``):
    "key_to_query", the key against every query (its own query included, as a candidate);
    "key_to_key", the key against every other key and, with ``share_negatives``, every other
    row's negatives. The positive stays the query's own key. The
    query's other queries join with ``same_view_negatives=True``; not with
    ``symmetric=True``, whose directions have a row each."""
        ),
    )
    share_negatives: bool = field(
        default=False,
        metadata=_about(
            """
share_negatives : bool, default False
    With ``negative_mode="paired"``, score every query against every row's negatives
    (N x M of them, and every worker's with ``gather``), each row's own M known as its own
    (sentence-transformers' hard-negative columns: see ``hardness_mode``)."""
        ),
    )
    hardness_mode: str | None = field(
        default=None,
        metadata=_about(
            """
hardness_mode : {None, "in_batch_negatives", "hard_negatives", "all_negatives"}, optional
    Hardness weighting (Lan et al. 2025, as sentence-transformers' MultipleNegativesRankingLoss):
    the logits of the query direction's chosen negatives gain
    ``hardness_strength * stop_gradient(similarity)``, so that harder negatives weigh more in
    the denominator. "in_batch_negatives": every candidate that is not the row's own (the
    other rows' keys and negatives); "hard_negatives": the row's own negatives (paired, or
    its own among ``share_negatives``); "all_negatives": both. None (the default): off."""
        ),
    )
    hardness_strength: float = field(
        default=0.0,
        metadata=_about(
            """
hardness_strength : float, default 0.0
    The weight ``alpha >= 0`` of ``hardness_mode`` (0: no effect)."""
        ),
    )
    guide_margin: float | None = field(
        default=None,
        metadata=_about(
            """
guide_margin : float, optional
    False-negative masking (GISTEmbed, Solatorio 2024): a candidate whose guide similarity
    to the row's anchor exceeds that of the row's own positive, less the margin, is hidden
    (left out of the denominator, never NaN). The similarities are those of the ``guide=``
    embeddings given at the call, or without them the model's own (held constant in the
    gradient). None (the default): no masking."""
        ),
    )
    guide_strategy: str = field(
        default="absolute",
        metadata=_about(
            """
guide_strategy : {"absolute", "relative"}, default "absolute"
    How ``guide_margin`` lowers the threshold ``g`` (the guide similarity of the own
    positive): "absolute", ``g - margin``; "relative", ``g - |g| * margin``. A candidate is
    hidden when its guide similarity is strictly above the threshold."""
        ),
    )
    decoupled: bool | str = field(
        default=False,
        metadata=_about(
            """
decoupled : {False, True, "blocks"}, default False
    Decoupled contrastive learning (Yeh et al. 2022): each row's own positive leaves its
    denominator, ``l_i = LSE(negatives) - w_i z_ip`` (with ``positives="own"``; a row
    without negatives keeps only its positive term). True: one log-sum-exp over all the
    row's negatives (the paper's DCL). "blocks": one per block of candidates (the keys, the
    other queries, the explicit negatives), summed (lightly's ``DCLLoss``)."""
        ),
    )
    decoupled_sigma: float | None = field(
        default=None,
        metadata=_about(
            """
decoupled_sigma : float, optional
    With ``decoupled``, weight each row's positive term by DCLW's negative von Mises-Fisher
    weight ``w_i = 2 - N softmax_i(s_ii / decoupled_sigma)`` over this call's (this
    worker's) N rows, ``s_ii`` the cosine of the row with its own positive, held constant in
    the gradient. None (the default): ``w_i = 1``."""
        ),
    )
    label_smoothing: float = field(
        default=0.0,
        metadata=_about(
            """
label_smoothing : float, default 0.0
    Label smoothing ``0 <= e < 1``: each row's target puts ``1 - e`` on its positive (spread
    evenly over its positives with ``positives="supcon"``) and ``e / K_i`` on each of its
    ``K_i`` kept candidates, as ``torch.nn.functional.cross_entropy(label_smoothing=e)``
    over the row's candidates. Not with ``positives="pairs"``."""
        ),
    )
    teacher_temperature: float = field(
        default=1.0,
        metadata=_about(
            """
teacher_temperature : float, default 1.0
    With ``teacher=`` embeddings at the call (distillation): each row's target is the
    softmax of the teacher's similarities over the row's kept candidates, divided by this
    temperature (> 0); with ``label_smoothing``, ``(1 - e) y + e / K_i``."""
        ),
    )
    margin: float = field(
        default=0.0,
        metadata=_about(
            """
margin : float, default 0.0
    Additive margin (AM-softmax, LaBSE): every positive's logit becomes
    ``(s - margin) / temperature``, in both directions with ``symmetric``."""
        ),
    )
    debiased_prior: float = field(
        default=0.0,
        metadata=_about(
            """
debiased_prior : float, default 0.0
    The class prior ``tau+`` in [0, 1) of the debiased contrastive loss (Chuang et al.
    2020): the negatives' sum is replaced by its debiased estimate, at least
    ``Q e^{-1/t}`` for ``Q`` negatives. With ``positives="own"`` only; computed in log
    space. 0 with ``hardness_beta=0``: the plain loss."""
        ),
    )
    hardness_beta: float = field(
        default=0.0,
        metadata=_about(
            """
hardness_beta : float, default 0.0
    Hard-negative reweighting ``beta >= 0`` (Robinson et al. 2021, HCL): the negatives
    of the debiased estimate weigh ``Q softmax(beta z)``, their weights' gradient
    included. With ``positives="own"`` only."""
        ),
    )
    gather: Gather | None = field(
        default=None,
        metadata=_about(
            """
gather : callable, optional
    Share keys across workers: :func:`infonce_xp.torch.all_gather` or
    :func:`infonce_xp.jax.all_gather`. Each worker's queries are then scored against the
    keys (in-batch positives, unpaired negatives) of every worker."""
        ),
    )

    def __post_init__(self) -> None:
        check_temperature(self.temperature, sync=True)
        check_choice("reduction", self.reduction, REDUCTIONS)
        check_choice("negative_mode", self.negative_mode, NEGATIVE_MODES)
        check_choice("positives", self.positives, POSITIVES)
        if not isinstance(self.in_batch_negatives, (bool, type(None))):
            raise TypeError(
                "in_batch_negatives must be None, True or False; "
                f"got {describe(self.in_batch_negatives)}"
            )
        for flag in ("same_view_negatives", "symmetric", "normalize", "share_negatives"):
            check_flag(flag, getattr(self, flag))
        size = self.chunk_size
        if isinstance(size, bool):
            raise TypeError(f"chunk_size must be None or an int; got {describe(size)}")
        if size is not None:
            try:
                size = operator.index(size)  # an int, or a NumPy integer
            except TypeError:
                raise TypeError(
                    f"chunk_size must be None or an int; got {describe(self.chunk_size)}"
                ) from None
            if size < 1:
                raise ValueError(f"chunk_size must be an int of at least 1; got {size!r}")
            object.__setattr__(self, "chunk_size", size)
        check_rows(self, JOINT, HARDNESS_MODES, DECOUPLED)
        if self.gather is not None and not callable(self.gather):
            raise TypeError(f"gather must be None or a callable; got {describe(self.gather)}")
        if self.gather is not None and not isinstance(self.gather, Gather):
            raise TypeError(
                "gather must also have a rank() method giving this worker's block index, as "
                "infonce_xp.torch.all_gather and infonce_xp.jax.all_gather do; "
                f"got {describe(self.gather)}"
            )

    @classmethod
    def of(
        cls,
        temperature: Any,
        reduction: Any,
        negative_mode: Any,
        keywords: dict[str, Any],
        *,
        for_call: bool = False,
    ) -> Options:
        """Options from the seed's three and the keyword-only ones, naming any unknown keyword.

        ``for_call``: the options of one function call, whose temperature array (not NumPy) is
        checked by ``check_call`` instead, where reading it costs no device synchronisation:
        construction reads an array's value even from an accelerator, which at every call
        would be a host synchronisation.
        """
        key = None
        if for_call and type(temperature) in (float, int):  # a function's call: seen before?
            # with the types: 2 == 2.0 == True, but only one may be a valid chunk_size
            given = (temperature, reduction, negative_mode, *keywords.values())
            key = (*keywords, *given, *map(type, given))
            try:
                return _RECENT[key]
            except KeyError:
                pass
            except TypeError:  # an unhashable option: checked every time
                key = None
        unknown = keywords.keys() - KEYWORD_ONLY.keys()
        if unknown:
            raise TypeError(
                f"unexpected keyword argument {sorted(unknown)[0]!r}; "
                f"the keyword-only options are {', '.join(KEYWORD_ONLY)}"
            )
        if not (for_call and is_array_api_obj(temperature) and not is_numpy_value(temperature)):
            options = cls(temperature, reduction, negative_mode, **keywords)
            if key is not None:
                if len(_RECENT) >= 64:
                    _RECENT.clear()
                _RECENT[key] = options
            return options
        options = cls(1.0, reduction, negative_mode, **keywords)
        object.__setattr__(options, "temperature", temperature)  # checked by check_call
        return options

    def _facts(self) -> tuple[Any, ...]:
        # An array temperature by identity: its value may change, and == of arrays is an array.
        return tuple(
            id(value) if is_array_api_obj(value) else value
            for value in (getattr(self, name) for name in OPTION_NAMES)
        )

    def __eq__(self, other: object) -> bool:
        """Equal options: the same values (an array temperature: the same array)."""
        if type(other) is not type(self):
            return NotImplemented
        return self._facts() == other._facts()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        # Asked at every call (check_call's cache): kept once found, and never pickled (a
        # string's hash differs between processes, an array's id between copies).
        found = self.__dict__.get("_hash")
        if found is None:
            found = hash(self._facts())
            object.__setattr__(self, "_hash", found)
        return found  # type: ignore[no-any-return]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def replace(self, **changes: Any) -> Options:
        """A copy with some options changed, checked again."""
        return dataclasses.replace(self, **changes)

    def describe(self, **shown: Any) -> str:
        """``name=value, ...``: the seed's options always, the others where not the default."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | shown
        return ", ".join(
            f"{name}={value!r}"
            for name, value in values.items()
            if name not in KEYWORD_ONLY or not _is_default(value, KEYWORD_ONLY[name].default)
        )


def _is_default(value: Any, default: Any) -> bool:
    """Whether an option's value is its default: equal and of its type (a copy from pickle or
    deepcopy is the default too; ``1`` is not ``True``)."""
    return value is default or (type(value) is type(default) and value == default)


FIELDS = {f.name: f for f in dataclasses.fields(Options)}
KEYWORD_ONLY = {name: f for name, f in FIELDS.items() if not f.metadata["seed"]}
OPTION_NAMES = tuple(FIELDS)
