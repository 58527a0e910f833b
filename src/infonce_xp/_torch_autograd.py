"""The engine inside a ``torch.autograd.Function``: torch's bridge to the analytic backward."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
from torch._functorch.utils import unwrap_dead_wrappers

from . import _engine, _stacks
from ._arrays import traits
from ._call import Call, gathered, reduce


class _Rows(torch.autograd.Function):
    """Loss rows by ``_engine.forward``; gradients by ``_engine.backward``.

    The forward returns the residuals as extra outputs (the ``setup_context`` form, which
    ``torch.func`` and ``torch.compile`` need); the backward runs the analytic backward on them.
    Under ``create_graph=True`` it recomputes the forward from the inputs under autograd first,
    so that the same array-API backward, run on tensors that carry a graph, is itself
    differentiable. Autocast is off inside: the engine picks its compute dtypes itself.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(*args: Any) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        # One static argument and the tensors: Function.apply binds the arguments to this
        # signature at every call (setup_context form), which costs per parameter.
        (xp, config, offset, names, temperature, _), *tensors = args
        if temperature is None:  # learnable: the last tensor
            *tensors, temperature = tensors
        with _no_autocast(tensors[0]):
            rows, counts, residuals = _engine.forward(
                xp, dict(zip(names, tensors)), temperature, config, offset
            )
        # Not the units by name: views of the stacks, as outputs, trip the compiler.
        leaves = _flatten(residuals._replace(split=None), config)
        if counts is not None and any(counts is leaf for leaf in leaves):
            # One tensor as two outputs loses the compiler its placeholder ("pairs": the counts
            # are a residual too): the output is a copy.
            counts = counts.clone()
        return (rows, *([] if counts is None else [counts]), *leaves)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        tensors = inputs[1:]
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the residuals
        # The inputs (with a learnable temperature last), then the residuals.
        ctx.save_for_backward(*tensors, *output[1:])
        ctx.static, ctx.with_split = inputs[0], False
        xp, names = inputs[0][0], inputs[0][3]
        given = dict(zip(names, tensors))
        floats = {k: given[k] for k in sorted(names) if k not in _engine.LABEL_NAMES}
        ctx.stacks = len(_stacks.groups(floats, traits(xp).fusing()))  # as the forward's

    @staticmethod
    def backward(ctx: Any, grad_rows: torch.Tensor, *_: Any) -> tuple[Any, ...]:  # type: ignore[override]
        xp, config, offset, names, temperature, reduced = ctx.static
        if grad_rows is None:  # the loss rows are unused: no gradient anywhere
            return (None,) * (1 + len(names) + (temperature is None))
        saved = ctx.saved_tensors
        n = len(names) + (temperature is None)
        inputs = dict(zip(names, saved))
        if temperature is None:
            temperature = saved[n - 1]
        if reduced is not None:  # the forward returned the rows' mean or sum
            rows = saved[0].shape[0]
            grad_rows = (grad_rows / rows if reduced == "mean" else grad_rows).expand(rows)
        with _no_autocast(grad_rows):
            if torch.is_grad_enabled() and any(t.requires_grad for t in (grad_rows, *saved)):
                # create_graph=True: rebuild the residuals with a graph back to the inputs.
                residuals = _engine.forward(xp, inputs, temperature, config, offset)[2]
            else:
                counted = _engine.general(config)  # the counts are no residual
                leaves = saved[n + counted :]
                residuals = _unflatten(inputs, leaves, config, ctx.stacks, ctx.with_split)
            wanted = {k for k, needed in zip(names, ctx.needs_input_grad[1:]) if needed}
            grads = _engine.backward(
                xp, residuals, grad_rows, temperature, config, offset, wanted=wanted
            )
        learned = (grads.get("temperature"),) if ctx.static[4] is None else ()
        return (None, *(grads.get(k) for k in names), *learned)


class _EagerRows(_Rows):
    """``_Rows`` for plain eager autograd, outside ``torch.func`` and ``torch.compile``.

    The old ``forward(ctx, ...)`` form saves the residuals without returning them: each extra
    output of a Function costs autograd bookkeeping at every call and in the backward (about
    5 us of ~230 at (8, 16)). It also reduces the rows ("mean" or "sum", when the static
    argument names one), which spares autograd a node of its own. The backward is ``_Rows``'.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> torch.Tensor:  # type: ignore[override]
        (xp, config, offset, names, temperature, reduced), *tensors = args
        if temperature is None:  # learnable: the last tensor
            *tensors, temperature = tensors
        with _no_autocast(tensors[0]):
            rows, _, residuals = _engine.forward(  # no counts: the plain path only
                xp, dict(zip(names, tensors)), temperature, config, offset
            )
            if reduced is not None:
                rows = xp.mean(rows) if reduced == "mean" else xp.sum(rows)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*args[1:], *_flatten(residuals, config))  # as setup_context does
        ctx.static, ctx.with_split = args[0], True
        ctx.stacks = len(residuals.units or ())
        return rows  # type: ignore[no-any-return]

    setup_context = torch.autograd.Function.setup_context  # the forward above takes ctx


# Function.apply binds its arguments to forward's signature at every call; a stored signature
# spares inspect rebuilding it.
_Rows.forward.__signature__ = inspect.signature(_Rows.forward)  # type: ignore[attr-defined]

# Function.apply binds the arguments to forward's signature (a third of the Function's own cost
# at small sizes, for a forward that takes ``*args``: nothing to bind), unwraps dead transform
# wrappers and calls this C entry point, which runs forward and records the graph node.
# ``loss_rows`` calls it directly outside transforms and the compiler.
_eager_apply = super(torch.autograd.Function, _EagerRows).apply


_ANY_AUTOCAST = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)  # one C call
_NO_CONTEXT = contextlib.nullcontext()  # reusable: it holds no state


def _no_autocast(like: torch.Tensor) -> Any:
    if not _ANY_AUTOCAST():
        return _NO_CONTEXT
    kind = like.device.type
    if not torch.is_autocast_enabled(kind):
        return _NO_CONTEXT
    return torch.autocast(kind, enabled=False)


def _flatten(residuals: _engine.Residuals, config: _engine.Config) -> list[torch.Tensor]:
    """The residuals that are not inputs, as a flat list of tensors (see ``_unflatten``): the
    stacks of units and lengths, the units by name (views of the stacks, which spare the
    backward cutting them again), then each direction's."""
    leaves = []
    if residuals.units is not None and residuals.lengths is not None:
        leaves += [*residuals.units, *residuals.lengths, *(residuals.split or {}).values()]
    for part in residuals.per_direction:
        leaves.extend(part)
    return leaves


def _unflatten(
    inputs: dict[str, torch.Tensor],
    leaves: Any,
    config: _engine.Config,
    n: int,
    with_split: bool,
) -> _engine.Residuals:
    """The residuals that ``_flatten`` gave, with ``n`` stacks of units (and of lengths)."""
    units = lengths = split = None
    if config.normalize:
        names = sorted(k for k in inputs if k not in _engine.LABEL_NAMES)  # as the engine's
        units, lengths = tuple(leaves[:n]), tuple(leaves[n : 3 * n])
        if with_split:
            split = dict(zip(names, leaves[3 * n : 3 * n + len(names)]))
            leaves = leaves[len(names) :]
        leaves = leaves[3 * n :]
    count = len(_engine.directions(config, gathered=False))  # the same with gather
    size = len(leaves) // count
    per_direction = [tuple(leaves[i * size : (i + 1) * size]) for i in range(count)]
    return _engine.Residuals(inputs, units, lengths, per_direction, split)


class TorchAdapter:
    """Loss rows and value-and-grad for torch tensors, through torch autograd."""

    @classmethod
    def loss(cls, call: Call) -> torch.Tensor:
        """The reduced loss of a checked call (its rows reduced inside the Function where it
        is entered directly)."""
        reduction = call.options.reduction
        rows, counts = cls.loss_rows(call, None if reduction == "none" else reduction)
        if rows.ndim == 0:  # reduced already
            return rows if rows.dtype == call.out_dtype else rows.to(call.out_dtype)
        return reduce(call, rows, counts)  # type: ignore[no-any-return]

    @staticmethod
    def loss_rows(
        call: Call, reduction: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-query losses of a checked call, differentiable through torch autograd, and each
        row's weight in a mean. With ``reduction`` ("mean" or "sum"), the rows may come back
        reduced to a 0-D loss already."""
        arrays, offset = gathered(call)
        t = call.temperature
        inputs = [*arrays.values(), *([t] if isinstance(t, torch.Tensor) else [])]
        if not (torch.is_grad_enabled() and any(x.requires_grad for x in inputs)):
            # Nothing to differentiate: no Function, no residuals kept.
            with _no_autocast(inputs[0]):
                rows, counts, _ = _engine.forward(call.xp, arrays, t, call.config, offset)
            return rows, counts
        learnable = isinstance(t, torch.Tensor)
        # Cached by the engine; asked here first, outside the Function: a compiler tracing the
        # backward (where _unflatten asks) refuses the cache's first write.
        _engine.directions(call.config, gathered=False)
        static = (call.xp, call.config, offset, tuple(arrays), None if learnable else t)
        general = _engine.general(call.config)  # its rows come with counts
        if general or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            outputs = _Rows.apply((*static, None), *inputs)  # type: ignore[no-untyped-call]
            return outputs[0], outputs[1] if general else None
        alive = unwrap_dead_wrappers(tuple(inputs))
        return _eager_apply((*static, reduction), *alive), None  # type: ignore[no-untyped-call]

    @classmethod
    def value_and_grad(
        cls, call: Call, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``info_nce_value_and_grad`` for torch tensors: autograd through ``loss_rows``."""
        with torch.enable_grad():
            inputs = {
                name: x.detach().requires_grad_()
                for name, x in call.arrays.items()
                if name not in _engine.LABEL_NAMES
            }
            temperature = call.temperature
            if isinstance(temperature, torch.Tensor):
                inputs["temperature"] = temperature = temperature.detach().requires_grad_()
            arrays = {k: v for k, v in call.arrays.items() if k in _engine.LABEL_NAMES}
            arrays |= {k: v for k, v in inputs.items() if k != "temperature"}
            call = call._replace(arrays=arrays, temperature=temperature)
            loss = cls.loss(call)
            grads = torch.autograd.grad(loss, list(inputs.values()), grad_output)
        return loss.detach(), dict(zip(inputs, grads))


ADAPTER = TorchAdapter()
