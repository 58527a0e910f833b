"""JAX adapter: the engine inside ``jax.custom_vjp`` (with ``lax.scan`` tiles), an all-gather."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax

from . import _engine, _loss
from ._arrays import array_namespace
from ._jax_grad_cache import grad_cache

__all__ = ["AllGather", "all_gather", "grad_cache"]


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rows(static: tuple[Any, ...], temperature: Any, arrays: tuple[Any, ...], offset: Any) -> Any:
    return _rows_fwd(static, temperature, arrays, offset)[0]


def _rows_fwd(
    static: tuple[Any, ...], temperature: Any, arrays: tuple[Any, ...], offset: Any
) -> Any:
    config, names, fixed_temperature, scan = static
    t = fixed_temperature if temperature is None else temperature
    xp = array_namespace(*arrays)
    rows, residuals = _engine.forward(xp, dict(zip(names, arrays)), t, config, offset, scan)
    return rows, (residuals, temperature, offset)


def _rows_bwd(static: tuple[Any, ...], saved: Any, grad_rows: Any) -> Any:
    config, names, fixed_temperature, scan = static
    residuals, temperature, offset = saved
    t = fixed_temperature if temperature is None else temperature
    xp = array_namespace(grad_rows)
    grads = _engine.backward(xp, residuals, grad_rows, t, config, offset, scan)
    return grads.get("temperature"), tuple(grads.get(n) for n in names), None


_rows.defvjp(_rows_fwd, _rows_bwd)


def loss_rows(call: _loss.Call) -> Any:
    """Per-query losses of a checked call, differentiable by ``jax.grad`` (and jit, vmap)."""
    arrays, offset = _loss.gathered(call)
    temperature = call.temperature
    fixed = temperature if isinstance(temperature, (int, float)) else None
    # Inside shard_map(check_vma=True), a replicated input (the temperature, say) must enter the
    # custom_vjp typed as varying over the mapped axes, so that JAX sums its per-device
    # cotangents (the transpose of pcast is a psum); loop carries must be typed alike.
    inputs = list(arrays.values()) + ([] if fixed is not None else [temperature])
    axes = frozenset().union(*(_varying_axes(x) for x in inputs))
    arrays = {name: _vary(x, axes) for name, x in arrays.items()}
    learnable = None if fixed is not None else _vary(temperature, axes)
    static = (call.config, tuple(arrays), fixed, _Scan(axes))
    return _rows(static, learnable, tuple(arrays.values()), offset)


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


def value_and_grad(call: _loss.Call, grad_output: Any) -> tuple[Any, dict[str, Any]]:
    """``info_nce_value_and_grad`` for JAX arrays: ``jax.vjp`` through ``loss_rows``."""
    inputs = dict(call.arrays)
    if not isinstance(call.temperature, (int, float)):
        inputs["temperature"] = call.temperature

    def loss(inputs: dict[str, Any]) -> Any:
        arrays = {k: v for k, v in inputs.items() if k != "temperature"}
        this = call._replace(arrays=arrays, temperature=inputs.get("temperature", call.temperature))
        return _loss.reduce(this, loss_rows(this))

    value, pullback = jax.vjp(loss, inputs)
    return value, pullback(grad_output)[0]


@dataclass(frozen=True)
class AllGather:
    """Differentiable all-gather over a named mapped axis, for ``info_nce(..., gather=...)``.

    For use inside ``jax.shard_map`` or ``jax.pmap``; its transpose (``psum_scatter``) returns
    to each device the sum of the gradients of its rows over all devices.
    """

    axis_name: Any

    def __call__(self, x: Any) -> Any:
        try:
            return jax.lax.all_gather(x, self.axis_name, axis=0, tiled=True)
        except NameError as err:
            raise ValueError(self._unbound()) from err

    def rank(self) -> Any:
        """This device's block index along the axis (a traced integer)."""
        try:
            return jax.lax.axis_index(self.axis_name)
        except NameError as err:
            raise ValueError(self._unbound()) from err

    def _unbound(self) -> str:
        return (
            f"infonce_xp.jax.all_gather({self.axis_name!r}) must be used inside jax.shard_map or "
            f"jax.pmap with a mapped axis named {self.axis_name!r}"
        )


def all_gather(axis_name: Any) -> AllGather:
    """A differentiable gather over the mapped axis ``axis_name`` (see :class:`AllGather`).

    Examples
    --------
    >>> from infonce_xp.jax import all_gather
    >>> all_gather("batch")
    AllGather(axis_name='batch')
    """
    return AllGather(axis_name)
