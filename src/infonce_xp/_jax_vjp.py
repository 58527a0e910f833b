"""The engine inside ``jax.custom_vjp`` (with ``lax.scan`` tiles): JAX's bridge to the analytic
backward, typed for ``shard_map``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax

from ._arrays import array_namespace
from ._call import Call, gathered
from ._directions import CONSTANT_NAMES
from ._engine import Plan


class _Static(NamedTuple):
    """The static argument of the ``custom_vjp``: hashable, no array."""

    plan: Plan
    names: tuple[str, ...]  # of the arrays, in order
    temperature: Any  # a Python number, or None: the temperature is an array argument
    scan: Any


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _loss(static: _Static, temperature: Any, arrays: tuple[Any, ...], offset: Any) -> Any:
    return _loss_fwd(static, temperature, arrays, offset)[0]


def _loss_fwd(static: _Static, temperature: Any, arrays: tuple[Any, ...], offset: Any) -> Any:
    t = static.temperature if temperature is None else temperature
    xp = array_namespace(*arrays)
    loss, residuals = static.plan.forward(
        xp, dict(zip(static.names, arrays)), t, offset, static.scan
    )
    # The units by name are slices of the stacks: XLA would keep them as arrays of their own.
    return loss, (residuals._replace(split=None), temperature, offset)


def _loss_bwd(static: _Static, saved: Any, grad: Any) -> Any:
    residuals, temperature, offset = saved
    t = static.temperature if temperature is None else temperature
    xp = array_namespace(grad)
    grads = static.plan.backward(xp, residuals, grad, t, offset, static.scan)
    return grads.get("temperature"), tuple(grads.get(n) for n in static.names), None


_loss.defvjp(_loss_fwd, _loss_bwd)


def _varying_axes(x: Any) -> frozenset[Any]:
    """The mapped axes over which ``x`` varies (empty outside shard_map)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # JAX >= 0.10; before it, aval.vma
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def _vary(x: Any, axes: frozenset[Any]) -> Any:
    missing = tuple(sorted(axes - _varying_axes(x), key=str))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


@dataclass(frozen=True)
class _Scan:
    """``jax.lax.scan`` whose initial carry varies over ``axes`` like the loop body's output."""

    axes: frozenset[Any]

    def __call__(self, body: Any, carry: Any, xs: Any) -> Any:
        return jax.lax.scan(body, jax.tree.map(lambda c: _vary(c, self.axes), carry), xs)


class JaxAdapter:
    """The loss and value-and-grad for JAX arrays, through ``jax.custom_vjp``."""

    @staticmethod
    def loss(call: Call) -> Any:
        """The reduced loss of a checked call, differentiable by ``jax.grad`` (and jit, vmap)."""
        arrays, offset = gathered(call)
        temperature = call.temperature
        fixed = temperature if isinstance(temperature, (int, float)) else None
        # Inside shard_map(check_vma=True), a replicated input (the temperature, say) must enter
        # the custom_vjp typed as varying over the mapped axes, so that JAX sums its per-device
        # cotangents (the transpose of pcast is a psum); loop carries must be typed alike.
        inputs = list(arrays.values()) + ([] if fixed is not None else [temperature])
        axes = frozenset().union(*(_varying_axes(x) for x in inputs))
        arrays = {name: _vary(x, axes) for name, x in arrays.items()}
        learnable = None if fixed is not None else _vary(temperature, axes)
        static = _Static(call.plan, tuple(arrays), fixed, _Scan(axes))
        return _loss(static, learnable, tuple(arrays.values()), offset)

    @classmethod
    def value_and_grad(cls, call: Call, grad_output: Any) -> tuple[Any, dict[str, Any]]:
        """``info_nce_value_and_grad`` for JAX arrays: ``jax.vjp`` through ``loss``."""
        inputs = {k: x for k, x in call.arrays.items() if k not in CONSTANT_NAMES}
        labels = {k: x for k, x in call.arrays.items() if k in CONSTANT_NAMES}
        if not isinstance(call.temperature, (int, float)):
            inputs["temperature"] = call.temperature

        def loss(inputs: dict[str, Any]) -> Any:
            arrays = {k: v for k, v in inputs.items() if k != "temperature"} | labels
            t = inputs.get("temperature", call.temperature)
            return cls.loss(call._replace(arrays=arrays, temperature=t))

        value, pullback = jax.vjp(loss, inputs)
        grad = jax.numpy.ones_like(value) if grad_output is None else grad_output
        return value, pullback(grad)[0]


ADAPTER = JaxAdapter()
