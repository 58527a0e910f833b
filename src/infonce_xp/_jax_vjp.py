"""The engine inside ``jax.custom_vjp`` (with ``lax.scan`` tiles): JAX's bridge to the analytic
backward, typed for ``shard_map``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax

from . import _engine
from ._arrays import array_namespace
from ._call import Call, gathered, reduce


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rows(static: tuple[Any, ...], temperature: Any, arrays: tuple[Any, ...], offset: Any) -> Any:
    return _rows_fwd(static, temperature, arrays, offset)[0]


def _rows_fwd(
    static: tuple[Any, ...], temperature: Any, arrays: tuple[Any, ...], offset: Any
) -> Any:
    config, names, fixed_temperature, scan = static
    t = fixed_temperature if temperature is None else temperature
    xp = array_namespace(*arrays)
    rows, counts, residuals = _engine.forward(xp, dict(zip(names, arrays)), t, config, offset, scan)
    # The units by name are slices of the stacks: XLA would keep them as arrays of their own.
    return (rows, counts), (residuals._replace(split=None), temperature, offset)


def _rows_bwd(static: tuple[Any, ...], saved: Any, cotangents: Any) -> Any:
    config, names, fixed_temperature, scan = static
    grad_rows = cotangents[0]  # the counts take no gradient
    residuals, temperature, offset = saved
    t = fixed_temperature if temperature is None else temperature
    xp = array_namespace(grad_rows)
    grads = _engine.backward(xp, residuals, grad_rows, t, config, offset, scan)
    return grads.get("temperature"), tuple(grads.get(n) for n in names), None


_rows.defvjp(_rows_fwd, _rows_bwd)


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
    """Loss rows and value-and-grad for JAX arrays, through ``jax.custom_vjp``."""

    @staticmethod
    def loss_rows(call: Call) -> Any:
        """Per-query losses of a checked call, differentiable by ``jax.grad`` (and jit, vmap),
        and each row's weight in a mean."""
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
        static = (call.config, tuple(arrays), fixed, _Scan(axes))
        return _rows(static, learnable, tuple(arrays.values()), offset)

    @classmethod
    def loss(cls, call: Call) -> Any:
        """The reduced loss of a checked call."""
        return reduce(call, *cls.loss_rows(call))

    @classmethod
    def value_and_grad(cls, call: Call, grad_output: Any) -> tuple[Any, dict[str, Any]]:
        """``info_nce_value_and_grad`` for JAX arrays: ``jax.vjp`` through ``loss_rows``."""
        inputs = {k: x for k, x in call.arrays.items() if k not in _engine.LABEL_NAMES}
        labels = {k: x for k, x in call.arrays.items() if k in _engine.LABEL_NAMES}
        if not isinstance(call.temperature, (int, float)):
            inputs["temperature"] = call.temperature

        def loss(inputs: dict[str, Any]) -> Any:
            arrays = {k: v for k, v in inputs.items() if k != "temperature"} | labels
            t = inputs.get("temperature", call.temperature)
            return cls.loss(call._replace(arrays=arrays, temperature=t))

        value, pullback = jax.vjp(loss, inputs)
        return value, pullback(grad_output)[0]


ADAPTER = JaxAdapter()
