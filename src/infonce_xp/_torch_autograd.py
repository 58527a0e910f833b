"""The plan inside a ``torch.autograd.Function``: torch's bridge to the analytic backward."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, NamedTuple

import torch

from ._call import Call, gathered
from ._directions import CONSTANT_NAMES
from ._lean import Execution


class _Static(NamedTuple):
    """The Function's first argument: everything that is not a tensor."""

    plan: Execution  # the plan's (see Plan.execution)
    xp: Any
    offset: Any
    names: tuple[str, ...]  # of the tensors, in order (a learned temperature follows them)
    temperature: Any  # a Python number, or None: the temperature is the last tensor


def _split(static: _Static, tensors: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """The arrays by name and the temperature, from the Function's tensors."""
    n = len(static.names)
    t = static.temperature if static.temperature is not None else tensors[n]
    return dict(zip(static.names, tensors[:n])), t


class _Rows(torch.autograd.Function):
    """The loss by ``Plan.forward``; gradients by ``Plan.backward``.

    The forward returns the residuals as extra outputs (the ``setup_context`` form, which
    ``torch.func`` and ``torch.compile`` need); the backward runs the analytic backward on them.
    Under ``create_graph=True`` it recomputes the forward from the inputs under autograd first,
    so that the same array-API backward, run on tensors that carry a graph, is itself
    differentiable. Autocast is off inside: the plan picks its compute dtypes itself.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(*args: Any) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        # One static argument and the tensors: Function.apply binds the arguments to this
        # signature at every call (setup_context form), which costs per parameter.
        static, *tensors = args
        arrays, t = _split(static, tensors)
        with _no_autocast(tensors[0]):
            loss, residuals = static.plan.forward(static.xp, arrays, t, static.offset)
        # Not the units by name: views of the stacks, as outputs, trip the compiler.
        return (loss, *static.plan.save(residuals, split=False))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the residuals
        ctx.save_for_backward(*inputs[1:], *output[1:])
        ctx.static, ctx.split = inputs[0], False

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[Any, ...]:  # type: ignore[override]
        static: _Static = ctx.static
        n = len(static.names) + (static.temperature is None)
        if grad is None:  # the loss is unused: no gradient anywhere
            return (None,) * (1 + n)
        saved = ctx.saved_tensors
        arrays, t = _split(static, saved)
        plan, xp, offset = static.plan, static.xp, static.offset
        with _no_autocast(grad):
            if torch.is_grad_enabled() and any(x.requires_grad for x in (grad, *saved)):
                # create_graph=True: rebuild the residuals with a graph back to the inputs.
                residuals = plan.forward(xp, arrays, t, offset)[1]
            else:
                residuals = plan.load(arrays, saved[n:], ctx.split)
            needs = ctx.needs_input_grad[1:]
            wanted = None if False not in needs else {k for k, w in zip(static.names, needs) if w}
            grads = plan.backward(xp, residuals, grad, t, offset, wanted=wanted)
        learned = (grads.get("temperature"),) if static.temperature is None else ()
        return (None, *map(grads.get, static.names), *learned)


class _EagerRows(_Rows):
    """``_Rows`` for plain eager autograd, outside ``torch.func`` and ``torch.compile``.

    The old ``forward(ctx, ...)`` form saves the residuals without returning them: each extra
    output of a Function costs autograd bookkeeping at every call and in the backward. The
    backward is ``_Rows``'.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> torch.Tensor:  # type: ignore[override]
        static, *tensors = args
        arrays, t = _split(static, tensors)
        with _no_autocast(tensors[0]):
            loss, residuals = static.plan.forward(static.xp, arrays, t, static.offset)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*tensors, *static.plan.save(residuals, split=True))
        ctx.static, ctx.split = static, True
        return loss  # type: ignore[no-any-return]

    setup_context = torch.autograd.Function.setup_context  # the forward above takes ctx


# Function.apply binds its arguments to forward's signature at every call; a stored signature
# spares inspect rebuilding it.
_Rows.forward.__signature__ = inspect.signature(_Rows.forward)  # type: ignore[attr-defined]


def _fast_apply() -> Any:
    """Function.apply without its Python layer, or None where this torch lacks the private
    pieces (``tests/test_hardening_torch.py`` pins that the torch we test with has them).

    Function.apply binds the arguments to forward's signature (a third of the Function's own
    cost at small sizes, for a forward that takes ``*args``: nothing to bind), unwraps dead
    transform wrappers and calls the C entry point, which runs forward and records the node.
    """
    try:
        from torch._functorch.utils import unwrap_dead_wrappers

        entry = super(torch.autograd.Function, _EagerRows).apply
        transforms = torch._C._are_functorch_transforms_active
    except (ImportError, AttributeError):
        return None

    def apply(static: _Static, inputs: list[torch.Tensor]) -> torch.Tensor:
        if torch.compiler.is_compiling() or transforms():
            return _Rows.apply(static, *inputs)[0]  # type: ignore[no-untyped-call,no-any-return]
        alive = unwrap_dead_wrappers(tuple(inputs))  # type: ignore[no-untyped-call]
        return entry(static, *alive)  # type: ignore[no-any-return,no-untyped-call]

    return apply


def _apply(static: _Static, inputs: list[torch.Tensor]) -> torch.Tensor:
    """The loss through ``_Rows``: the public path where the fast one is missing."""
    return _Rows.apply(static, *inputs)[0]  # type: ignore[no-untyped-call,no-any-return]


APPLY = _fast_apply() or _apply

_ANY_AUTOCAST = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)  # one C call
_NO_CONTEXT = contextlib.nullcontext()  # reusable: it holds no state


def _no_autocast(like: torch.Tensor) -> Any:
    if not _ANY_AUTOCAST():
        return _NO_CONTEXT
    kind = like.device.type
    if not torch.is_autocast_enabled(kind):
        return _NO_CONTEXT
    return torch.autocast(kind, enabled=False)


class TorchAdapter:
    """The loss and value-and-grad for torch tensors, through torch autograd."""

    @staticmethod
    def loss(call: Call) -> torch.Tensor:
        """The reduced loss of a checked call, differentiable through torch autograd."""
        arrays, offset = gathered(call)
        t = call.temperature
        inputs = [*arrays.values(), *([t] if isinstance(t, torch.Tensor) else [])]
        if not (torch.is_grad_enabled() and any(x.requires_grad for x in inputs)):
            # Nothing to differentiate: no Function, no residuals kept.
            with _no_autocast(inputs[0]):
                return call.plan.execution.forward(call.xp, arrays, t, offset)[0]  # type: ignore[no-any-return]
        fixed = None if isinstance(t, torch.Tensor) else t
        return APPLY(_Static(call.plan.execution, call.xp, offset, tuple(arrays), fixed), inputs)

    @classmethod
    def value_and_grad(
        cls, call: Call, grad_output: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``info_nce_value_and_grad`` for torch tensors: autograd through ``loss``."""
        with torch.enable_grad():
            inputs = {
                name: x.detach().requires_grad_()
                for name, x in call.arrays.items()
                if name not in CONSTANT_NAMES
            }
            temperature = call.temperature
            if isinstance(temperature, torch.Tensor):
                inputs["temperature"] = temperature = temperature.detach().requires_grad_()
            arrays = {k: v for k, v in call.arrays.items() if k in CONSTANT_NAMES}
            arrays |= {k: v for k, v in inputs.items() if k != "temperature"}
            loss = cls.loss(call._replace(arrays=arrays, temperature=temperature))
            grad = torch.ones_like(loss) if grad_output is None else grad_output
            grads = torch.autograd.grad(loss, list(inputs.values()), grad)
        return loss.detach(), dict(zip(inputs, grads))


ADAPTER = TorchAdapter()
