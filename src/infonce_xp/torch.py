"""PyTorch adapter: the engine inside ``autograd.Function``, the ``nn.Module``, an all-gather."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from . import _engine, _loss
from ._torch_grad_cache import grad_cache

__all__ = ["AllGather", "InfoNCE", "all_gather", "grad_cache"]

MIN_TEMPERATURE = 0.01  # CLIP's bound on a learned temperature (logit scale <= 100)


class _Rows(torch.autograd.Function):
    """Loss rows by ``_engine.forward``; gradients by ``_engine.backward`` (no autograd tape)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        xp: Any,
        config: _engine.Config,
        offset: int,
        names: tuple[str, ...],
        temperature: Any,
        *tensors: torch.Tensor,
    ) -> torch.Tensor:
        rows, residuals = _engine.forward(
            xp, dict(zip(names, tensors)), temperature, config, offset
        )
        learnable = isinstance(temperature, torch.Tensor)
        leaves, ctx.lengths = _flatten(residuals)
        ctx.save_for_backward(*leaves, *([temperature] if learnable else []))
        ctx.xp, ctx.config, ctx.offset, ctx.names = xp, config, offset, names
        ctx.temperature = None if learnable else temperature
        return rows  # type: ignore[no-any-return]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_rows: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        saved = ctx.saved_tensors
        learnable = ctx.temperature is None
        temperature = saved[-1] if learnable else ctx.temperature
        residuals = _unflatten(saved[:-1] if learnable else saved, ctx.names, ctx.lengths)
        grads = _engine.backward(ctx.xp, residuals, grad_rows, temperature, ctx.config, ctx.offset)
        return (
            None,
            None,
            None,
            None,
            grads.get("temperature"),
            *(grads.get(n) for n in ctx.names),
        )


def _flatten(residuals: _engine.Residuals) -> tuple[list[Any], list[int]]:
    """The residuals as a flat list for ``save_for_backward`` (their dicts share one key order)."""
    leaves = [*residuals.inputs.values(), *residuals.units.values(), *residuals.norms.values()]
    for part in residuals.per_direction:
        leaves.extend(part)
    return leaves, [len(part) for part in residuals.per_direction]


def _unflatten(leaves: Any, names: tuple[str, ...], lengths: list[int]) -> _engine.Residuals:
    n = len(names)
    inputs, units, norms = (dict(zip(names, leaves[i * n : (i + 1) * n])) for i in range(3))
    per_direction, start = [], 3 * n
    for length in lengths:
        per_direction.append(tuple(leaves[start : start + length]))
        start += length
    return _engine.Residuals(inputs, units, norms, per_direction)


def loss_rows(call: _loss.Call) -> torch.Tensor:
    """Per-query losses of a checked call, differentiable through torch autograd."""
    arrays, offset = _loss.gathered(call)
    rows: torch.Tensor = _Rows.apply(  # type: ignore[no-untyped-call]
        call.xp, call.config, offset, tuple(arrays), call.temperature, *arrays.values()
    )
    return rows


def value_and_grad(
    call: _loss.Call, grad_output: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``info_nce_value_and_grad`` for torch tensors: autograd through ``loss_rows``."""
    with torch.enable_grad():
        inputs = {name: x.detach().requires_grad_() for name, x in call.arrays.items()}
        temperature = call.temperature
        if isinstance(temperature, torch.Tensor):
            inputs["temperature"] = temperature = temperature.detach().requires_grad_()
        call = call._replace(
            arrays={k: v for k, v in inputs.items() if k != "temperature"}, temperature=temperature
        )
        loss = _loss.reduce(call, loss_rows(call))
        grads = torch.autograd.grad(loss, list(inputs.values()), grad_output)
    return loss.detach(), dict(zip(inputs, grads))


class InfoNCE(nn.Module):
    """The InfoNCE loss as a ``torch.nn.Module``: a drop-in for ``info_nce.InfoNCE``.

    Same constructor as :class:`infonce_xp.InfoNCE`, plus ``learn_temperature``.

    Parameters
    ----------
    temperature, reduction, negative_mode, symmetric, normalize, chunk_size, gather
        As :func:`infonce_xp.info_nce`.
    learn_temperature : bool, default False
        Learn the temperature as CLIP does: a parameter ``log_inverse_temperature`` (the log of
        the logit scale), initialised from ``temperature`` and clamped so that the temperature
        never drops below 0.01. It shows in ``parameters()`` and ``state_dict()``.

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
        symmetric: bool = False,
        normalize: bool = True,
        chunk_size: int | None = None,
        gather: Any = None,
        learn_temperature: bool = False,
    ) -> None:
        super().__init__()
        _loss.check_options(
            temperature, reduction, negative_mode, symmetric, normalize, chunk_size, gather
        )
        self.reduction = reduction
        self.negative_mode = negative_mode
        self.symmetric = symmetric
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.gather = gather
        self.learn_temperature = learn_temperature
        if learn_temperature:
            if isinstance(temperature, torch.Tensor) or temperature < MIN_TEMPERATURE:
                raise ValueError(
                    "learn_temperature=True needs temperature to be a float >= "
                    f"{MIN_TEMPERATURE}; got {temperature!r}"
                )
            self.log_inverse_temperature = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        else:
            self._temperature = temperature

    @property
    def temperature(self) -> Any:
        if self.learn_temperature:
            bound = math.log(1.0 / MIN_TEMPERATURE)
            return torch.exp(-torch.clamp(self.log_inverse_temperature, max=bound))
        return self._temperature

    @temperature.setter
    def temperature(self, value: Any) -> None:
        if self.learn_temperature:
            raise AttributeError("a learned temperature is set through log_inverse_temperature")
        self._temperature = value

    def forward(
        self,
        query: torch.Tensor,
        positive_key: torch.Tensor,
        negative_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        loss: torch.Tensor = _loss.info_nce(
            query, positive_key, negative_keys, **_loss.options(self)
        )
        return loss

    def extra_repr(self) -> str:
        if not self.learn_temperature:
            return _loss.describe_options(self)
        current = float(self.temperature.detach())
        return (
            _loss.describe_options(self, temperature=float(f"{current:.4g}"))
            + ", learn_temperature=True"
        )


class _AllGatherFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size(group)
        size = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=group)
        if any(int(s) != tensor.shape[0] for s in sizes):
            raise ValueError(
                "every worker must have the same local batch size to gather keys; "
                f"got {[int(s) for s in sizes]}"
            )
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        ctx.group, ctx.rows = group, tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        # Every worker's loss used this worker's rows: their gradients add up.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = dist.get_rank(ctx.group) * ctx.rows
        return grad[start : start + ctx.rows], None


class AllGather:
    """Differentiable all-gather over ``torch.distributed``, for ``info_nce(..., gather=...)``.

    Calling it returns the concatenation (along axis 0) of a tensor over all workers of
    ``group``; its backward returns to each worker the sum, over all workers, of the gradients
    for its own rows, so that DDP's gradient averaging yields the single-process gradient.
    Works with gloo (CPU) and NCCL (GPU); every worker must hold the same number of rows.

    Parameters
    ----------
    group : ProcessGroup, optional
        The process group; default: the default group.

    Examples
    --------
    >>> from infonce_xp.torch import AllGather, InfoNCE, all_gather
    >>> loss_fn = InfoNCE(gather=all_gather)  # or AllGather(group) for a sub-group
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group

    def _check(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "infonce_xp.torch.all_gather needs an initialised process group: call "
                "torch.distributed.init_process_group(...) first, or pass gather=None"
            )

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        self._check()
        gathered: torch.Tensor = _AllGatherFunction.apply(tensor, self.group)  # type: ignore[no-untyped-call]
        return gathered

    def rank(self) -> int:
        """This worker's block index in the gathered tensor."""
        self._check()
        return int(dist.get_rank(self.group))

    def __repr__(self) -> str:
        return "all_gather" if self.group is None else f"AllGather(group={self.group!r})"


all_gather = AllGather()
"""Differentiable all-gather over the default process group (an :class:`AllGather`)."""
