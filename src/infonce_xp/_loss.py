"""The public ``info_nce``, ``info_nce_value_and_grad`` and ``InfoNCE``: check, then dispatch."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._call import check_call, check_grad_output
from ._checks import SUPERVISED, check_supervised_options
from ._dispatch import adapter_for, checked_loss, loss_of, one_call_when_compiled
from ._docs import option_attributes, with_options, with_supervised_options
from ._options import Options
from ._typing import Array, Namespace, NegativeMode, Reduction


class Gradients(NamedTuple):
    """Gradients returned by :func:`info_nce_value_and_grad`; ``None`` where an input is absent
    or a Python number."""

    query: Array
    positive_key: Array
    negative_keys: Array | None
    temperature: Array | None


@with_options
@one_call_when_compiled
def info_nce(
    query: Array,
    positive_key: Array,
    negative_keys: Array | None = None,
    temperature: float | Array = 0.1,
    reduction: Reduction = "mean",
    negative_mode: NegativeMode = "unpaired",
    *,
    labels: Array | None = None,
    negative_labels: Array | None = None,
    guide: tuple[Array, ...] | None = None,
    teacher: tuple[Array, ...] | None = None,
    sample_weight: Array | None = None,
    xp: Namespace | None = None,
    **options: Any,
) -> Array:
    r"""The InfoNCE loss of queries against their positive keys and negatives.

    For query :math:`q_i`, positive :math:`k_i`, candidates :math:`C_i` (the positive and the
    negatives) and temperature :math:`t`, with :math:`s` the cosine similarity,

    .. math:: \ell_i = -\log \frac{\exp(s(q_i, k_i)/t)}{\sum_{c \in C_i} \exp(s(q_i, c)/t)}

    The same names, order, defaults and numbers as ``info_nce`` of ``info-nce-pytorch`` 0.1.4,
    for the arrays of any array-API library; new options are keyword-only.

    Parameters
    ----------
    %(arrays)s
    %(seed_options)s
    %(options)s
    %(labels_both)s
    %(guide)s
    %(teacher)s
    %(sample_weight)s
    %(xp)s

    Returns
    -------
    array
        0-D for "mean" and "sum", shape (N,) for "none"; of the inputs' namespace, device and
        (promoted) dtype.

    Raises
    ------
    ValueError
        For shapes, ``reduction``, ``negative_mode``, ``positives``, a temperature that is not
        a finite positive number, a ``chunk_size`` below 1, or options that contradict each
        other.
    TypeError
        For non-arrays, arrays of two libraries, non-floating inputs, non-integer labels and
        unknown keywords.

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp import info_nce
    >>> rng = np.random.default_rng(0)
    >>> query, positive_key = rng.normal(size=(2, 32, 128))
    >>> loss = info_nce(query, positive_key)
    >>> loss.shape, bool(loss > 0)
    ((), True)
    >>> info_nce(query, positive_key, rng.normal(size=(48, 128)), reduction="none").shape
    (32,)

    Class ids make same-class keys positives (SupCon) or ignore them (duplicates):

    >>> labels = rng.integers(0, 4, size=32)
    >>> bool(info_nce(query, positive_key, labels=labels, positives="supcon") > 0)
    True
    """
    opts = Options.of(temperature, reduction, negative_mode, options, for_call=True)
    arrays = (query, positive_key, negative_keys, labels, negative_labels)
    return checked_loss(
        opts, *arrays, xp=xp, guide=guide, teacher=teacher, sample_weight=sample_weight
    )


@with_options
def info_nce_value_and_grad(
    query: Array,
    positive_key: Array,
    negative_keys: Array | None = None,
    temperature: float | Array = 0.1,
    reduction: Reduction = "mean",
    negative_mode: NegativeMode = "unpaired",
    *,
    labels: Array | None = None,
    negative_labels: Array | None = None,
    guide: tuple[Array, ...] | None = None,
    teacher: tuple[Array, ...] | None = None,
    sample_weight: Array | None = None,
    grad_output: Array | None = None,
    xp: Namespace | None = None,
    **options: Any,
) -> tuple[Array, Gradients]:
    """The InfoNCE loss and its analytic gradient, for any backend.

    NumPy and CuPy have no autograd: this returns the gradients of ``sum(grad_output * loss)``
    with respect to every input, computed by the same array-API backward that the torch and
    JAX adapters use. On torch and JAX arrays it goes through their autograd and gives the
    same numbers.

    Parameters
    ----------
    %(arrays)s
    %(seed_options)s
    %(options)s
    %(labels_both)s
    %(guide)s
    %(teacher)s
    %(sample_weight)s
    %(grad_output)s
    %(xp)s

    Returns
    -------
    loss : array
        As :func:`info_nce`.
    grads : Gradients
        A named tuple ``(query, positive_key, negative_keys, temperature)`` of arrays shaped
        like the inputs; ``negative_keys`` and ``temperature`` are None when absent or a
        Python number.

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp import info_nce_value_and_grad
    >>> rng = np.random.default_rng(0)
    >>> query, positive_key = rng.normal(size=(2, 8, 16))
    >>> loss, grads = info_nce_value_and_grad(query, positive_key)
    >>> grads.query.shape, grads.negative_keys is None
    ((8, 16), True)
    """
    opts = Options.of(temperature, reduction, negative_mode, options, for_call=True)
    arrays = (query, positive_key, negative_keys, labels, negative_labels)
    call = check_call(
        opts, *arrays, xp=xp, guide=guide, teacher=teacher, sample_weight=sample_weight
    )
    if grad_output is not None:
        n: int = call.arrays["query"].shape[0]
        check_grad_output(call, grad_output, (n,) if opts.reduction == "none" else ())
    loss, grads = adapter_for(call.xp).value_and_grad(call, grad_output)
    return loss, Gradients(
        grads["query"], grads["positive_key"], grads.get("negative_keys"), grads.get("temperature")
    )


@option_attributes
@with_options
class InfoNCE:
    """The InfoNCE loss as a callable object, for any array library.

    A plain class (no backend import); :class:`infonce_xp.torch.InfoNCE` is the
    ``torch.nn.Module`` with the same constructor. The options are checked once, here, and
    kept in ``options`` (an :class:`~infonce_xp.Options`); each is also an attribute.

    Parameters
    ----------
    %(seed_options)s
    %(options)s

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp import InfoNCE
    >>> loss_fn = InfoNCE(temperature=0.07)
    >>> loss_fn
    InfoNCE(temperature=0.07, reduction='mean', negative_mode='unpaired')
    >>> rng = np.random.default_rng(0)
    >>> float(loss_fn(*rng.normal(size=(2, 32, 128)))) > 0
    True
    """

    options: Options

    def __init__(
        self,
        temperature: float | Array = 0.1,
        reduction: Reduction = "mean",
        negative_mode: NegativeMode = "unpaired",
        **options: Any,
    ) -> None:
        self.options = Options.of(temperature, reduction, negative_mode, options)

    def __call__(
        self,
        query: Array,
        positive_key: Array,
        negative_keys: Array | None = None,
        *,
        labels: Array | None = None,
        negative_labels: Array | None = None,
        guide: tuple[Array, ...] | None = None,
        teacher: tuple[Array, ...] | None = None,
        sample_weight: Array | None = None,
    ) -> Array:
        arrays = (query, positive_key, negative_keys, labels, negative_labels)
        return loss_of(
            self.options, *arrays, guide=guide, teacher=teacher, sample_weight=sample_weight
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options.describe()})"


@with_supervised_options
@one_call_when_compiled
def supervised_info_nce(
    embeddings: Array,
    labels: Array,
    temperature: float | Array = 0.1,
    reduction: Reduction = "mean",
    *,
    references: Array | None = None,
    reference_labels: Array | None = None,
    sample_weight: Array | None = None,
    xp: Namespace | None = None,
    **options: Any,
) -> Array:
    r"""The supervised contrastive loss of one set of embeddings with class labels.

    Every row is an anchor and every other row a candidate; its positives are the other rows of
    its class. For two views of each sample, concatenate them (and their labels twice). With
    ``references``, the candidates are the reference rows instead (all of them), and a row's
    positives the references of its class (pytorch-metric-learning's ``ref_emb``).

    Parameters
    ----------
    embeddings : array, shape (B, D)
        One embedding per row.
    labels : array of int, shape (B,)
        The class id of each row.
    temperature : float or 0-D array, default 0.1
        Logits are divided by the temperature; a 0-D array receives a gradient.
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" gives each row's loss (0 for a row without a positive); "mean" averages over
        the rows that have a positive ("supcon") or over the positive pairs ("pairs"), and is
        0, never NaN, when there is none.
    positives : {"supcon", "pairs"}, default "supcon"
        "supcon": a row's loss is the log-sum-exp over the other rows minus the mean logit of
        its positives (SupCon's L_out, pytorch-metric-learning's SupConLoss). "pairs": each
        positive pair is a term ``softplus(LSE(negatives) - logit)`` (pytorch-metric-learning's
        NTXentLoss, optax's ntxent).
    %(supervised_options)s
    references : array, shape (M, D), optional
        Keyword-only: the candidates of every row, in place of the other rows (with
        ``gather``, every worker's).
    reference_labels : array of int, shape (M,), optional
        The class ids of ``references`` (needed with them).
    %(sample_weight)s
    %(xp)s

    Returns
    -------
    array
        0-D for "mean" and "sum", shape (B,) for "none".

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp import supervised_info_nce
    >>> rng = np.random.default_rng(0)
    >>> views = rng.normal(size=(2, 16, 32))  # two views of 16 samples
    >>> labels = rng.integers(0, 4, size=16)
    >>> loss = supervised_info_nce(np.concatenate(views), np.concatenate([labels, labels]))
    >>> loss.shape, bool(loss > 0)
    ((), True)
    """
    options = check_supervised_options(options)
    opts = Options.of(temperature, reduction, "unpaired", options, for_call=True)
    arrays = (embeddings, labels, references, reference_labels, sample_weight)
    return checked_loss(opts, xp=xp, **supervised_keywords(*arrays))


def supervised_keywords(
    embeddings: Any, labels: Any, references: Any, reference_labels: Any, sample_weight: Any
) -> dict[str, Any]:
    """A single-set call's arrays as ``check_call`` (and ``loss_of``) takes them."""
    return {
        "query": embeddings,
        "negative_keys": references,
        "labels": labels,
        "negative_labels": reference_labels,
        "supervised": True,
        "sample_weight": sample_weight,
    }


@option_attributes
@with_supervised_options
class SupervisedInfoNCE:
    """:func:`supervised_info_nce` as a callable object, for any array library.

    :class:`infonce_xp.torch.SupervisedInfoNCE` is the ``torch.nn.Module``.

    Parameters
    ----------
    temperature : float or 0-D array, default 0.1
        As in :func:`supervised_info_nce`.
    reduction : {"mean", "sum", "none"}, default "mean"
        As in :func:`supervised_info_nce`.
    positives : {"supcon", "pairs"}, default "supcon"
        As in :func:`supervised_info_nce`.
    %(supervised_options)s

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp import SupervisedInfoNCE
    >>> loss_fn = SupervisedInfoNCE(temperature=0.07)
    >>> rng = np.random.default_rng(0)
    >>> float(loss_fn(rng.normal(size=(8, 16)), np.arange(8) % 3)) > 0
    True
    """

    options: Options

    def __init__(
        self, temperature: float | Array = 0.1, reduction: Reduction = "mean", **options: Any
    ) -> None:
        self.options = Options.of(
            temperature, reduction, "unpaired", check_supervised_options(options)
        )

    def __call__(
        self,
        embeddings: Array,
        labels: Array,
        *,
        references: Array | None = None,
        reference_labels: Array | None = None,
        sample_weight: Array | None = None,
    ) -> Array:
        arrays = (embeddings, labels, references, reference_labels, sample_weight)
        return loss_of(self.options, **supervised_keywords(*arrays))

    def __repr__(self) -> str:
        o = self.options
        shown = [f"temperature={o.temperature!r}", f"reduction={o.reduction!r}"]
        shown += [f"{name}={getattr(o, name)!r}" for name in SUPERVISED]
        return f"{type(self).__name__}({', '.join(shown)})"
