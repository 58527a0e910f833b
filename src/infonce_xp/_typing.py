"""The types the package speaks in: arrays, namespaces, the gather protocol, option values."""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

Array = Any  # an array of any array-API library
Namespace = Any  # an array-API namespace (``array_api_compat.array_namespace(x)``)
Reduction = Literal["mean", "sum", "none"]
NegativeMode = Literal["unpaired", "paired"]
Positives = Literal["own", "supcon", "pairs"]


@runtime_checkable
class Gather(Protocol):
    """What ``gather=`` takes: :func:`infonce_xp.torch.all_gather`, :func:`infonce_xp.jax.all_gather`.

    ``gather(x)`` concatenates ``x`` over all workers along axis 0 (differentiably, where the
    library has autograd); ``rank()`` is this worker's block index in that concatenation.
    """

    def __call__(self, x: Array, /) -> Array: ...

    def rank(self) -> Any: ...


@runtime_checkable
class ScatteringGather(Gather, Protocol):
    """A :class:`Gather` that can also send gathered gradients home, for libraries without
    autograd (``info_nce_value_and_grad`` on NumPy or CuPy with ``gather=``).

    ``scatter(g)`` takes the gradient of the concatenation and returns this worker's rows of
    its sum over all workers.
    """

    def scatter(self, grad: Array, /) -> Array: ...


@runtime_checkable
class RingGather(Gather, Protocol):
    """A :class:`Gather` that can also pass arrays round the ring of workers, for
    ``exchange="ring"``: ``shift(x)`` sends ``x`` to the next worker and returns the previous
    worker's (no gradient: the engine sends gradients itself); ``size()`` is the number of
    workers, a Python int."""

    def shift(self, x: Array, /) -> Array: ...

    def size(self) -> int: ...
