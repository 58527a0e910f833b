"""The engine inside a ``torch.autograd.Function``: torch's bridge to the analytic backward."""

from __future__ import annotations

from typing import Any

import torch

from . import _engine
from ._call import Call, gathered, reduce


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


class TorchAdapter:
    """Loss rows and value-and-grad for torch tensors, through torch autograd."""

    @staticmethod
    def loss_rows(call: Call) -> torch.Tensor:
        """Per-query losses of a checked call, differentiable through torch autograd."""
        arrays, offset = gathered(call)
        rows: torch.Tensor = _Rows.apply(  # type: ignore[no-untyped-call]
            call.xp, call.config, offset, tuple(arrays), call.temperature, *arrays.values()
        )
        return rows

    @classmethod
    def value_and_grad(
        cls, call: Call, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``info_nce_value_and_grad`` for torch tensors: autograd through ``loss_rows``."""
        with torch.enable_grad():
            inputs = {name: x.detach().requires_grad_() for name, x in call.arrays.items()}
            temperature = call.temperature
            if isinstance(temperature, torch.Tensor):
                inputs["temperature"] = temperature = temperature.detach().requires_grad_()
            arrays = {k: v for k, v in inputs.items() if k != "temperature"}
            call = call._replace(arrays=arrays, temperature=temperature)
            loss = reduce(call, cls.loss_rows(call))
            grads = torch.autograd.grad(loss, list(inputs.values()), grad_output)
        return loss.detach(), dict(zip(inputs, grads))


ADAPTER = TorchAdapter()
