"""PyTorch: the ``nn.Module`` losses, gradient caching, and a differentiable all-gather over
``torch.distributed``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._checks import SUPERVISED, check_bias, check_supervised_options
from ._dispatch import loss_of
from ._docs import option_attributes, with_options, with_supervised_options
from ._loss import supervised_keywords
from ._options import Options
from ._sigmoid_loss import describe_sigmoid, options_of, sigmoid_keywords
from ._torch_gather import AllGather, all_gather
from ._torch_grad_cache import grad_cache

__all__ = ["AllGather", "InfoNCE", "SigmoidLoss", "SupervisedInfoNCE", "all_gather", "grad_cache"]

MIN_TEMPERATURE = 0.01  # CLIP's bound on a learned temperature (logit scale <= 100)


class _Loss(nn.Module):
    """What the two modules share: checked options, and a temperature that may be learned.

    A ``Parameter`` given as ``temperature`` is registered as one, as the seed's module does
    (``self.temperature = temperature``): ``parameters()``, ``state_dict()``, ``.to()`` and
    optimizers see it, and the options follow it.
    """

    options: Options

    def _set_temperature(self, temperature: Any, learn_temperature: Any) -> None:
        if not isinstance(learn_temperature, bool):
            raise TypeError(f"learn_temperature must be True or False; got {learn_temperature!r}")
        self.learn_temperature = learn_temperature
        if learn_temperature:
            if isinstance(temperature, torch.Tensor) or temperature < MIN_TEMPERATURE:
                raise ValueError(
                    "learn_temperature=True needs temperature to be a float >= "
                    f"{MIN_TEMPERATURE}; got {temperature!r}"
                )
            self.log_inverse_temperature = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        elif isinstance(temperature, nn.Parameter):
            self._parameters["temperature"] = temperature

    @property
    def temperature(self) -> Any:
        if self.learn_temperature:
            bound = math.log(1.0 / MIN_TEMPERATURE)
            return torch.exp(-torch.clamp(self.log_inverse_temperature, max=bound))
        return self._parameters.get("temperature", self.options.temperature)

    @temperature.setter
    def temperature(self, value: Any) -> None:
        if self.learn_temperature:
            raise AttributeError("a learned temperature is set through log_inverse_temperature")
        self.options = self.options.replace(temperature=value)
        self._parameters.pop("temperature", None)
        if isinstance(value, nn.Parameter):
            self._parameters["temperature"] = value

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "temperature":  # nn.Module would register a Parameter past the property
            _Loss.temperature.__set__(self, value)  # type: ignore[attr-defined]
        else:
            super().__setattr__(name, value)

    def _learned(self) -> Any:
        """The temperature to override the options' with: the learned one, else None."""
        if self.learn_temperature:
            return self.temperature
        registered = self._parameters.get("temperature")
        if registered is not None and registered is not self.options.temperature:
            # .to() or load_state_dict(assign=True) swapped the Parameter: follow it (checked)
            self.options = self.options.replace(temperature=registered)
        return None

    def _repr(self, shown: str) -> str:
        if not self.learn_temperature:
            return shown
        return shown + ", learn_temperature=True"

    def _shown_temperature(self) -> dict[str, Any]:
        temperature = self.temperature
        if not isinstance(temperature, torch.Tensor):
            return {}
        value = f"{float(temperature.detach()):.4g}"
        if self.learn_temperature:
            return {"temperature": float(value)}
        return {"temperature": _Shown(f"{type(temperature).__name__}({value})")}


class _Shown(str):
    """Text shown as it is in a repr (a tensor's value, without its multi-line repr)."""

    def __repr__(self) -> str:
        return str(self)


@option_attributes
@with_options
class InfoNCE(_Loss):
    """The InfoNCE loss as a ``torch.nn.Module``: a drop-in for ``info_nce.InfoNCE``.

    The constructor of :class:`infonce_xp.InfoNCE`, plus ``learn_temperature``. The options are
    checked once, here, and kept in ``options``; each is also an attribute. ``labels`` and
    ``negative_labels`` (and ``guide``) are keyword arguments of the call, as in
    :func:`infonce_xp.info_nce`.

    Parameters
    ----------
    %(seed_options)s
    learn_temperature : bool, default False
        Learn the temperature as CLIP does: a parameter ``log_inverse_temperature`` (the log of
        the logit scale), initialised from ``temperature`` and clamped so that the temperature
        never drops below 0.01. It shows in ``parameters()`` and ``state_dict()``.
    %(options)s

    Attributes
    ----------
    temperature : float or torch.Tensor
        The temperature in use: the float given, or, when learned, a 0-D tensor.

    Examples
    --------
    >>> import torch
    >>> from infonce_xp.torch import InfoNCE
    >>> loss_fn = InfoNCE(temperature=0.07, learn_temperature=True)
    >>> loss_fn
    InfoNCE(temperature=0.07, reduction='mean', negative_mode='unpaired', learn_temperature=True)
    >>> query = torch.randn(32, 128, requires_grad=True)
    >>> loss = loss_fn(query, torch.randn(32, 128))
    >>> loss.backward()
    >>> loss_fn.log_inverse_temperature.grad is not None
    True
    """

    def __init__(
        self,
        temperature: float | torch.Tensor = 0.1,
        reduction: str = "mean",
        negative_mode: str = "unpaired",
        *,
        learn_temperature: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        self.options = Options.of(temperature, reduction, negative_mode, options)
        self._set_temperature(temperature, learn_temperature)

    def forward(
        self,
        query: torch.Tensor,
        positive_key: torch.Tensor,
        negative_keys: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,
        negative_labels: torch.Tensor | None = None,
        guide: tuple[torch.Tensor, ...] | None = None,
        teacher: tuple[torch.Tensor, ...] | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        arrays = (query, positive_key, negative_keys, labels, negative_labels)
        loss: torch.Tensor = loss_of(
            self.options,
            *arrays,
            temperature=self._learned(),
            guide=guide,
            teacher=teacher,
            sample_weight=sample_weight,
        )
        return loss

    def extra_repr(self) -> str:
        return self._repr(self.options.describe(**self._shown_temperature()))


@option_attributes
@with_supervised_options
class SupervisedInfoNCE(_Loss):
    """:func:`infonce_xp.supervised_info_nce` as a ``torch.nn.Module`` (SupCon, NT-Xent with
    labels), with an optionally learned temperature.

    Parameters
    ----------
    temperature : float, default 0.1
        As in :func:`infonce_xp.supervised_info_nce`.
    reduction : {"mean", "sum", "none"}, default "mean"
        As in :func:`infonce_xp.supervised_info_nce`.
    learn_temperature : bool, default False
        As in :class:`InfoNCE`.
    positives : {"supcon", "pairs"}, default "supcon"
        As in :func:`infonce_xp.supervised_info_nce`.
    %(supervised_options)s

    Examples
    --------
    >>> import torch
    >>> from infonce_xp.torch import SupervisedInfoNCE
    >>> loss_fn = SupervisedInfoNCE(temperature=0.1)
    >>> embeddings = torch.randn(16, 32, requires_grad=True)
    >>> loss = loss_fn(embeddings, torch.arange(16) % 4)
    >>> loss.backward()
    >>> embeddings.grad.shape
    torch.Size([16, 32])
    """

    def __init__(
        self,
        temperature: float | torch.Tensor = 0.1,
        reduction: str = "mean",
        *,
        learn_temperature: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        options = check_supervised_options(options)
        self.options = Options.of(temperature, reduction, "unpaired", options)
        self._set_temperature(temperature, learn_temperature)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        references: torch.Tensor | None = None,
        reference_labels: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        arrays = (embeddings, labels, references, reference_labels, sample_weight)
        keywords = supervised_keywords(*arrays)
        loss: torch.Tensor = loss_of(self.options, temperature=self._learned(), **keywords)
        return loss

    def extra_repr(self) -> str:
        o = self.options
        shown = {"temperature": self.temperature, "reduction": o.reduction}
        shown |= {name: getattr(o, name) for name in SUPERVISED} | self._shown_temperature()
        return self._repr(", ".join(f"{k}={v!r}" for k, v in shown.items()))


class SigmoidLoss(_Loss):
    """:func:`infonce_xp.sigmoid_loss` (SigLIP) as a ``torch.nn.Module``, whose temperature
    and bias may be learned.

    Parameters
    ----------
    temperature : float, default 0.1
        As in :func:`infonce_xp.sigmoid_loss`; with ``learn_temperature``, the start.
    bias : float, default -10.0
        As in :func:`infonce_xp.sigmoid_loss`; with ``learn_bias``, the start.
    reduction : {"mean", "sum", "none"}, default "mean"
        As in :func:`infonce_xp.sigmoid_loss`.
    learn_temperature : bool, default False
        Keyword-only: learn ``log_inverse_temperature`` (the log of the logit scale) as
        SigLIP does, from ``log(1 / temperature)`` (``log(10)`` by default), the temperature
        bounded below by 0.01 as in :class:`InfoNCE`.
    learn_bias : bool, default False
        Keyword-only: learn ``bias``, a Parameter, from the value given (-10 by default, as
        SigLIP starts).
    normalize, chunk_size, gather, exchange
        Keyword-only, as in :func:`infonce_xp.sigmoid_loss`.

    Examples
    --------
    >>> import torch
    >>> from infonce_xp.torch import SigmoidLoss
    >>> loss_fn = SigmoidLoss(learn_temperature=True, learn_bias=True)
    >>> sorted(name for name, _ in loss_fn.named_parameters())
    ['bias', 'log_inverse_temperature']
    >>> image = torch.randn(16, 32, requires_grad=True)
    >>> loss_fn(image, torch.randn(16, 32)).backward()
    >>> loss_fn.bias.grad is not None and image.grad is not None
    True
    """

    def __init__(
        self,
        temperature: float | torch.Tensor = 0.1,
        bias: float | torch.Tensor = -10.0,
        reduction: str = "mean",
        *,
        learn_temperature: bool = False,
        learn_bias: bool = False,
        normalize: bool = True,
        chunk_size: int | None = None,
        gather: Any = None,
        exchange: str = "gather",
    ) -> None:
        super().__init__()
        self.options = options_of(temperature, reduction, normalize, chunk_size, gather, exchange)
        self._set_temperature(temperature, learn_temperature)
        if not isinstance(learn_bias, bool):
            raise TypeError(f"learn_bias must be True or False; got {learn_bias!r}")
        self.learn_bias, self.exchange = learn_bias, exchange
        if learn_bias:
            if isinstance(bias, (torch.Tensor, bool)):
                raise TypeError(f"learn_bias=True needs bias to be a float; got {bias!r}")
            bias = nn.Parameter(torch.tensor(float(bias)))
        self.bias = check_bias(bias)  # a Parameter given or made is registered as one

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, *, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        options, learned = self.options, self._learned()
        keywords = sigmoid_keywords(options, self.bias, labels, None, self.exchange, learned)
        loss: torch.Tensor = loss_of(options, query, key, **keywords)
        return loss

    def extra_repr(self) -> str:
        bias = self.bias
        if isinstance(bias, torch.Tensor):
            bias = float(f"{float(bias.detach()):.4g}") if self.learn_bias else _Shown("tensor")
        shown = describe_sigmoid(self.options, bias, self.exchange, **self._shown_temperature())
        shown = self._repr(shown)
        return shown + ", learn_bias=True" if self.learn_bias else shown
