"""The public ``sigmoid_loss``, ``sigmoid_loss_value_and_grad`` and ``SigmoidLoss`` (SigLIP):
check, then dispatch, through the same plan and engine as ``info_nce``."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._call import check_call, check_grad_output
from ._checks import check_bias, check_choice
from ._dispatch import adapter_for, checked_loss, loss_of, one_call_when_compiled
from ._options import Options
from ._typing import Array, Namespace, Reduction

EXCHANGES = ("gather", "ring")


class SigmoidGradients(NamedTuple):
    """Gradients returned by :func:`sigmoid_loss_value_and_grad`; ``None`` where an input is a
    Python number."""

    query: Array
    key: Array
    temperature: Array | None
    bias: Array | None


def options_of(
    temperature: Any,
    reduction: Any,
    normalize: Any,
    chunk_size: Any,
    gather: Any,
    exchange: Any,
    for_call: bool = False,
) -> Options:
    """The :class:`Options` of a sigmoid loss (checked, each error naming its argument)."""
    check_choice("exchange", exchange, EXCHANGES)
    keywords = {"normalize": normalize, "chunk_size": chunk_size, "gather": gather}
    return Options.of(temperature, reduction, "unpaired", keywords, for_call=for_call)


def sigmoid_keywords(
    options: Options, bias: Any, labels: Any, xp: Any, exchange: str, temperature: Any = None
) -> dict[str, Any]:
    """A sigmoid call's keywords of ``check_call`` (and ``loss_of``) beside its query and key
    (``temperature``: a module's learned one, or None)."""
    ring = exchange == "ring" and options.gather is not None
    return {"labels": labels, "xp": xp, "bias": bias, "temperature": temperature, "ring": ring}


@one_call_when_compiled
def sigmoid_loss(
    query: Array,
    key: Array,
    temperature: float | Array = 0.1,
    bias: float | Array = -10.0,
    reduction: Reduction = "mean",
    *,
    labels: Array | None = None,
    normalize: bool = True,
    chunk_size: int | None = None,
    gather: Any = None,
    exchange: str = "gather",
    xp: Namespace | None = None,
) -> Array:
    r"""The sigmoid loss of SigLIP (Zhai et al. 2023): every query-key pair scored on its own.

    With :math:`s_{ij}` the cosine similarity of query :math:`i` and key :math:`j`,
    :math:`y_{ij} = +1` for a positive pair (:math:`j = i`, or the same label when ``labels``
    are given) and :math:`-1` otherwise,

    .. math:: \ell_i = \sum_j \log\left(1 + e^{-y_{ij} (s_{ij} / t + b)}\right)

    "mean" is :math:`\sum_i \ell_i / N`: SigLIP divides by the batch size, not by the
    :math:`N^2` pairs. The same numbers as open_clip's ``SigLipLoss`` with
    ``logit_scale = 1 / t`` and ``logit_bias = b``, for the arrays of any array-API library.

    Parameters
    ----------
    query, key : array, shape (N, D)
        Row ``i`` of ``key`` is the positive of row ``i`` of ``query`` (an image and its
        text); every other key is a negative.
    temperature : float or 0-D array, default 0.1
        Similarities are divided by it; a 0-D array receives a gradient (SigLIP learns
        ``log(1 / t)``, from ``log(10)``).
    bias : float or 0-D array, default -10.0
        Added to every logit; a 0-D array receives a gradient (SigLIP starts it at -10, which
        keeps the first steps' loss from being swamped by the :math:`N^2 - N` negatives).
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" gives each query's loss, shape (N,).
    labels : array of int, shape (N,), optional
        Keyword-only: class ids; every key of a query's class is a positive (with
        ``gather``, every worker's keys and labels).
    normalize : bool, default True
        Keyword-only: L2-normalise the rows first (False: the dot product, as open_clip's
        loss sees the features its model normalised).
    chunk_size : int, optional
        Keyword-only: compute in tiles of this many rows and keys, never holding the
        N x N logits; the same numbers and gradients.
    gather : callable, optional
        Keyword-only: every worker's keys (and labels), as for :func:`infonce_xp.info_nce`
        (:func:`infonce_xp.torch.all_gather`, :func:`infonce_xp.jax.all_gather`): this
        worker's queries against every worker's keys, its own positives at its rows' offset,
        "mean" divided by its own N (each rank's loss is open_clip's on that rank).
    exchange : {"gather"}, default "gather"
        Keyword-only: how other workers' keys arrive: all of them at once through ``gather``.
    xp : namespace, optional
        Keyword-only: the arrays' namespace (inferred by default).

    Returns
    -------
    array
        0-D for "mean" and "sum", shape (N,) for "none"; of the inputs' namespace, device and
        (promoted) dtype.

    Raises
    ------
    ValueError
        For shapes, ``reduction``, ``exchange``, a temperature that is not a finite positive
        number, a bias that is not finite, a ``chunk_size`` below 1.
    TypeError
        For non-arrays, arrays of two libraries, non-floating inputs and non-integer labels.

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp import sigmoid_loss
    >>> rng = np.random.default_rng(0)
    >>> image, text = rng.normal(size=(2, 32, 128))
    >>> loss = sigmoid_loss(image, text)
    >>> loss.shape, bool(loss > 0)
    ((), True)
    >>> sigmoid_loss(image, text, labels=np.arange(32) % 8, reduction="none").shape
    (32,)
    """
    opts = options_of(temperature, reduction, normalize, chunk_size, gather, exchange, True)
    return checked_loss(opts, query, key, **sigmoid_keywords(opts, bias, labels, xp, exchange))


def sigmoid_loss_value_and_grad(
    query: Array,
    key: Array,
    temperature: float | Array = 0.1,
    bias: float | Array = -10.0,
    reduction: Reduction = "mean",
    *,
    labels: Array | None = None,
    normalize: bool = True,
    chunk_size: int | None = None,
    gather: Any = None,
    exchange: str = "gather",
    grad_output: Array | None = None,
    xp: Namespace | None = None,
) -> tuple[Array, SigmoidGradients]:
    """:func:`sigmoid_loss` and its analytic gradient, for any backend (as
    :func:`infonce_xp.info_nce_value_and_grad`).

    Parameters
    ----------
    query, key, temperature, bias, reduction, labels, normalize, chunk_size, gather, exchange, xp
        As in :func:`sigmoid_loss`.
    grad_output : array, optional
        The gradient of the loss (shaped as it is): gradients are those of
        ``sum(grad_output * loss)``; by default ones.

    Returns
    -------
    loss : array
        As :func:`sigmoid_loss`.
    grads : SigmoidGradients
        A named tuple ``(query, key, temperature, bias)``; ``temperature`` and ``bias`` are
        None when Python numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp import sigmoid_loss_value_and_grad
    >>> rng = np.random.default_rng(0)
    >>> image, text = rng.normal(size=(2, 8, 16))
    >>> loss, grads = sigmoid_loss_value_and_grad(image, text, bias=np.asarray(-10.0))
    >>> grads.key.shape, grads.bias.shape
    ((8, 16), ())
    """
    opts = options_of(temperature, reduction, normalize, chunk_size, gather, exchange, True)
    call = check_call(opts, query, key, **sigmoid_keywords(opts, bias, labels, xp, exchange))
    if grad_output is not None:
        n: int = call.arrays["query"].shape[0]
        check_grad_output(call, grad_output, (n,) if opts.reduction == "none" else ())
    loss, grads = adapter_for(call.xp).value_and_grad(call, grad_output)
    return loss, SigmoidGradients(
        grads["query"], grads["positive_key"], grads.get("temperature"), grads.get("bias")
    )


class SigmoidLoss:
    """:func:`sigmoid_loss` as a callable object, for any array library.

    A plain class (no backend import); :class:`infonce_xp.torch.SigmoidLoss` is the
    ``torch.nn.Module``, which can learn the temperature and the bias.

    Parameters
    ----------
    temperature, bias, reduction
        As in :func:`sigmoid_loss`.
    normalize, chunk_size, gather, exchange
        Keyword-only, as in :func:`sigmoid_loss`.

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp import SigmoidLoss
    >>> loss_fn = SigmoidLoss(temperature=0.1, bias=-10.0)
    >>> loss_fn
    SigmoidLoss(temperature=0.1, bias=-10.0, reduction='mean')
    >>> rng = np.random.default_rng(0)
    >>> float(loss_fn(*rng.normal(size=(2, 32, 128)))) > 0
    True
    """

    options: Options

    def __init__(
        self,
        temperature: float | Array = 0.1,
        bias: float | Array = -10.0,
        reduction: Reduction = "mean",
        *,
        normalize: bool = True,
        chunk_size: int | None = None,
        gather: Any = None,
        exchange: str = "gather",
    ) -> None:
        self.options = options_of(temperature, reduction, normalize, chunk_size, gather, exchange)
        self.bias, self.exchange = check_bias(bias), exchange

    @property
    def temperature(self) -> Any:
        return self.options.temperature

    def __call__(self, query: Array, key: Array, *, labels: Array | None = None) -> Array:
        keywords = sigmoid_keywords(self.options, self.bias, labels, None, self.exchange)
        return loss_of(self.options, query, key, **keywords)

    def __repr__(self) -> str:
        shown = describe_sigmoid(self.options, self.bias, self.exchange)
        return f"{type(self).__name__}({shown})"


def describe_sigmoid(options: Options, bias: Any, exchange: str, **shown: Any) -> str:
    """The arguments of a sigmoid loss (those after the reduction where they differ from the
    defaults), as a constructor's; ``shown`` overrides the first three's values."""
    parts = {"temperature": options.temperature, "bias": bias, "reduction": options.reduction}
    parts |= shown
    text = [f"{k}={v!r}" for k, v in parts.items()]
    defaults = {"normalize": True, "chunk_size": None, "gather": None}
    text += [
        f"{k}={getattr(options, k)!r}" for k, v in defaults.items() if getattr(options, k) != v
    ]
    return ", ".join(text + ([] if exchange == "gather" else [f"exchange={exchange!r}"]))
