"""``adapter_for(xp)``: how a namespace computes a call, found once per namespace.

Libraries with autograd (torch, JAX) get their bridge, imported on first use; every other
namespace (NumPy, CuPy, array-api-strict, ...) gets the analytic default, which runs the
plan's forward and backward directly. A new bridge is one branch of ``adapter_for``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ._arrays import library, native, traits
from ._call import Call, check_call, gathered
from ._checks import describe
from ._directions import HOME
from ._namespaces import dynamo_tracing
from ._options import Options
from ._typing import Array, Namespace, ScatteringGather


class Adapter(Protocol):
    def loss(self, call: Call) -> Array:
        """The reduced loss of a checked call."""
        ...

    def value_and_grad(
        self, call: Call, grad_output: Array | None
    ) -> tuple[Array, dict[str, Array]]:
        """The reduced loss and the gradients of ``sum(grad_output * loss)`` by input name
        (``grad_output`` None: ones)."""
        ...


class Analytic:
    """The plan's forward and analytic backward, for namespaces without autograd."""

    @staticmethod
    def loss(call: Call) -> Array:
        arrays, offset = gathered(call)
        return call.plan.execution.forward(call.xp, arrays, call.temperature, offset)[0]

    @staticmethod
    def value_and_grad(call: Call, grad_output: Array | None) -> tuple[Array, dict[str, Array]]:
        xp = call.xp
        gather = call.options.gather
        ring = call.plan.config.ring  # the ring sends the keys' gradients home itself
        if gather is not None and not ring and not isinstance(gather, ScatteringGather):
            raise TypeError(
                "gather must also have a scatter(grad) method for info_nce_value_and_grad on "
                f"{xp.__name__} arrays, which have no autograd to send gradients home; "
                f"got {describe(gather)}"
            )
        arrays, offset = gathered(call)
        run = call.plan.execution
        loss, residuals = run.forward(xp, arrays, call.temperature, offset)
        grads = run.backward(xp, residuals, grad_output, call.temperature, offset)
        for name, local in HOME.items():
            if name in grads:
                mine = gather.scatter(grads.pop(name))  # type: ignore[union-attr]
                grads[local] = mine if local not in grads else grads[local] + mine
        return loss, grads


ANALYTIC = Analytic()
_ADAPTERS: dict[str, Adapter] = {}  # by namespace name: a plain dict traces cleanly


def adapter_for(xp: Namespace) -> Adapter:
    """The :class:`Adapter` that computes calls on ``xp``'s arrays (its library's autograd
    bridge, imported on first use, or the analytic default)."""
    if xp.__name__ not in _ADAPTERS:
        # Probe the namespace here, outside any autograd Function: a compiler tracing the
        # backward refuses the first write to the traits cache.
        traits(xp)
        native(xp)
        name = library(xp)
        adapter: Adapter = ANALYTIC
        if name == "torch":
            from ._torch_autograd import ADAPTER as adapter
        elif name == "jax":
            from ._jax_vjp import ADAPTER as adapter
        _ADAPTERS[xp.__name__] = adapter
    return _ADAPTERS[xp.__name__]


def evaluate(call: Call) -> Array:
    """The reduced loss of a checked call."""
    return adapter_for(call.xp).loss(call)


F = TypeVar("F", bound=Callable[..., Any])


def one_call_when_compiled(fn: F) -> F:
    """Mark a public loss (a module-level function): while torch's Dynamo traces it, it is one
    opaque call that AOTAutograd traces (see ``_torch_compiled``); otherwise ``fn`` itself."""
    name = f"{fn.__module__}:{fn.__qualname__}"

    @functools.wraps(fn)
    def entry(*args: Any, **kwargs: Any) -> Any:
        if dynamo_tracing():
            from ._torch_compiled import call_whole

            return call_whole(fn, name, args, kwargs)
        return fn(*args, **kwargs)

    return entry  # type: ignore[return-value]


def checked_loss(options: Options, *arrays: Any, **checked: Any) -> Array:
    """The reduced loss of a call of ``options`` on ``arrays`` (as ``check_call`` takes
    them), checked: the body of the public functions, which are marked themselves."""
    return evaluate(check_call(options, *arrays, **checked))


# the classes' and modules' entry: their options cross as values (see _torch_compiled)
loss_of = one_call_when_compiled(checked_loss)
