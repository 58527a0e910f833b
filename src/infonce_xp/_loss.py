"""The public ``info_nce``, ``info_nce_value_and_grad`` and ``InfoNCE``: check, then dispatch."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._arrays import device
from ._call import check_call, check_grad_output
from ._dispatch import adapter_for, evaluate
from ._options import Options, option_attributes, with_options
from ._typing import Array, Namespace, NegativeMode, Reduction


class Gradients(NamedTuple):
    """Gradients returned by :func:`info_nce_value_and_grad`; ``None`` where an input is absent
    or a Python number."""

    query: Array
    positive_key: Array
    negative_keys: Array | None
    temperature: Array | None


@with_options
def info_nce(
    query: Array,
    positive_key: Array,
    negative_keys: Array | None = None,
    temperature: float | Array = 0.1,
    reduction: Reduction = "mean",
    negative_mode: NegativeMode = "unpaired",
    *,
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
    %(xp)s

    Returns
    -------
    array
        0-D for "mean" and "sum", shape (N,) for "none"; of the inputs' namespace, device and
        (promoted) dtype.

    Raises
    ------
    ValueError
        For shapes, ``reduction``, ``negative_mode``, a temperature that is not a finite
        positive number, or a ``chunk_size`` below 1.
    TypeError
        For non-arrays, arrays of two libraries, non-floating dtypes and unknown keywords.

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
    """
    opts = Options.of(temperature, reduction, negative_mode, options, for_call=True)
    return evaluate(
        check_call(opts, query=query, positive_key=positive_key, negative_keys=negative_keys, xp=xp)
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
    call = check_call(
        opts, query=query, positive_key=positive_key, negative_keys=negative_keys, xp=xp
    )
    n: int = call.arrays["query"].shape[0]
    out_shape: tuple[int, ...] = (n,) if opts.reduction == "none" else ()
    if grad_output is None:
        grad_output = call.xp.ones(out_shape, dtype=call.out_dtype, device=device(query))
    else:
        check_grad_output(call, grad_output, out_shape)
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
        self, query: Array, positive_key: Array, negative_keys: Array | None = None
    ) -> Array:
        return evaluate(
            check_call(
                self.options, query=query, positive_key=positive_key, negative_keys=negative_keys
            )
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options.describe()})"
