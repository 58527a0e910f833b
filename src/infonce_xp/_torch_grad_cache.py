"""Gradient caching for torch: a loss over a batch whose encoder activations do not fit at once.

From ``infonce_xp`` it imports only the library-agnostic checks of ``_micro_batches``; it
calls the user's ``encode`` and ``loss_fn``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ._micro_batches import batch_size, check_micro_batch, check_rows, check_towers, describe

__all__ = ["grad_cache"]

_State = tuple[torch.Tensor, list[torch.Tensor]]  # the CPU generator, then each CUDA device's


def grad_cache(
    encode: Callable[[Any], Any],
    inputs: Any,
    loss_fn: Callable[..., torch.Tensor],
    micro_batch: int,
    *,
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> torch.Tensor:
    """Back-propagate a loss over a whole batch, encoding it a micro-batch at a time.

    Gradient caching (Gao et al., 2021, arXiv:2101.06983): (1) embed the batch in micro-batches
    without an autograd graph; (2) compute the loss of all the embeddings and the gradient of
    every embedding, in one call of ``loss_fn``; (3) encode each micro-batch again, with its
    graph, and back-propagate its rows of that gradient. The encoder's activations are held
    for one micro-batch at a time; the parameters' ``.grad`` accumulate exactly as
    ``loss_fn(*encode(inputs)).backward()`` would (to floating-point round-off).

    Random state is replayed: the global CPU generator, and the generators of the CUDA devices
    that hold ``inputs`` when CUDA is initialised, are saved before each micro-batch's first
    pass and restored for its second, as ``torch.utils.checkpoint`` does, so dropout draws the
    same masks in both. Afterwards they are as the first pass left them. Random numbers drawn
    from an explicit ``torch.Generator`` inside ``encode`` are *not* replayed: draw those
    (data augmentation, say) before the call.

    Both passes run in the caller's autocast state; each embedding's gradient is cast to that
    embedding's dtype.

    Parameters
    ----------
    encode : callable
        ``encode(batch)`` maps a micro-batch of ``inputs`` (the same structure, fewer rows) to
        the embeddings: a tensor (one tower) or a tuple of tensors (one per tower, e.g.
        ``(query, key)``), each with one row per input row.
    inputs : tensor, or tuple, list or dict of them (nested)
        The whole batch: a pytree whose tensors all share the batch axis 0.
    loss_fn : callable
        ``loss_fn(*embeddings)`` returns the 0-D loss of the whole batch's embeddings, e.g. an
        :class:`infonce_xp.torch.InfoNCE` with any options (``symmetric``, ``chunk_size``,
        ``gather``, ``learn_temperature``: the gradients of its own parameters accumulate too),
        or any function.
    micro_batch : int
        Rows per micro-batch (the last one may be smaller): the memory of the encoder's graph
        scales with it. Any positive int, whether or not it divides the batch.
    no_sync : callable, optional
        A context manager factory under which the micro-batches but the last back-propagate,
        such as ``ddp_model.no_sync``: DistributedDataParallel then all-reduces the accumulated
        gradients once, after the last micro-batch. Default: ``encode.no_sync`` when ``encode``
        is a ``DistributedDataParallel`` module or a bound method of one; otherwise none.

    Returns
    -------
    torch.Tensor
        The loss, detached.

    Raises
    ------
    TypeError
        If ``micro_batch`` is not an int, ``inputs`` holds something other than tensors,
        ``encode`` returns something other than tensors, or ``loss_fn`` returns no tensor.
    ValueError
        If ``micro_batch`` is not positive, the batch is empty, the tensors of ``inputs``
        differ in their number of rows, ``encode`` returns the wrong number of rows or towers,
        or ``loss_fn`` returns no 0-D floating-point tensor that depends on the embeddings.

    Notes
    -----
    The parameters of ``loss_fn`` (a learned temperature) receive their gradient outside the
    DDP module's forward: under DDP, average it over workers yourself (or keep it fixed).
    The encoder runs twice per micro-batch, so a step costs about one more forward pass than
    plain training. BatchNorm sees micro-batch statistics, as in any micro-batching.

    Examples
    --------
    >>> import torch
    >>> from infonce_xp.torch import InfoNCE, grad_cache
    >>> _ = torch.manual_seed(0)
    >>> tower = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Dropout(0.1))
    >>> loss_fn = InfoNCE(symmetric=True, chunk_size=32, learn_temperature=True)
    >>> views = (torch.randn(100, 16), torch.randn(100, 16))  # two views of 100 samples
    >>> loss = grad_cache(lambda v: (tower(v[0]), tower(v[1])), views, loss_fn, micro_batch=32)
    >>> loss.requires_grad, tower[0].weight.grad.shape, loss_fn.log_inverse_temperature.grad.shape
    (False, torch.Size([32, 16]), torch.Size([]))
    """
    rows = _check(inputs, micro_batch)
    if no_sync is None:
        no_sync = _ddp_no_sync(encode)
    starts = range(0, rows, micro_batch)
    devices = _cuda_devices(inputs)

    states: list[_State | None] = []
    pieces: list[tuple[torch.Tensor, ...]] = []
    towers = None
    with torch.no_grad():
        for start in starts:
            part = _rows(inputs, start, min(start + micro_batch, rows))
            states.append(_rng_state(devices))
            out = _embeddings(encode(part), min(micro_batch, rows - start), towers)
            towers = len(out)
            pieces.append(out)
    embeddings = [torch.cat(tower).requires_grad_() for tower in zip(*pieces)]
    del pieces

    with torch.enable_grad():
        loss = loss_fn(*embeddings)
        _check_loss(loss)
        torch.autograd.backward(loss)
    grads = [e.grad for e in embeddings]
    del embeddings

    for i, start in enumerate(starts):
        stop = min(start + micro_batch, rows)
        last = i == len(starts) - 1
        context = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with context, _replay(devices, states[i]), torch.enable_grad():
            out = _embeddings(encode(_rows(inputs, start, stop)), stop - start, towers)
            pairs = [
                (e, g[start:stop].to(e.dtype))
                for e, g in zip(out, grads)
                if g is not None and e.requires_grad
            ]
            if pairs:
                torch.autograd.backward([e for e, _ in pairs], [g for _, g in pairs])
        states[i] = None  # free the saved state as we go
    return loss.detach()


def _check(inputs: Any, micro_batch: Any) -> int:
    """The batch size, after checking ``micro_batch`` and that the leaves share it."""
    check_micro_batch(micro_batch)
    sizes = {path: tuple(x.shape) for path, x in _leaves(inputs, "inputs")}
    return batch_size(sizes, "tensor")


def _leaves(tree: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield path, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{path}[{key!r}]")
    elif isinstance(tree, (tuple, list)):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        raise TypeError(
            "inputs must be a tensor or a tuple, list or dict of tensors (nested); "
            f"{path} is of type {type(tree).__name__}"
        )


def _rows(tree: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of every tensor of the pytree, in the same structure."""
    if isinstance(tree, torch.Tensor):
        return tree[start:stop]
    if isinstance(tree, dict):
        return type(tree)((k, _rows(v, start, stop)) for k, v in tree.items())
    if hasattr(tree, "_fields"):  # a namedtuple takes its fields as arguments
        return type(tree)(*(_rows(v, start, stop) for v in tree))
    return type(tree)(_rows(v, start, stop) for v in tree)


def _embeddings(out: Any, rows: int, towers: int | None) -> tuple[torch.Tensor, ...]:
    """``encode``'s result as a tuple of tensors, after checking it."""
    out = (out,) if isinstance(out, torch.Tensor) else out
    if not isinstance(out, (tuple, list)) or not all(isinstance(e, torch.Tensor) for e in out):
        raise TypeError(
            "encode must return a tensor or a tuple of tensors (one per tower); "
            f"got {describe(out)}"
        )
    if towers is not None:
        check_towers([towers, len(out)], "tensor")
    check_rows([tuple(e.shape) for e in out], rows)
    return tuple(out)


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a 0-D tensor; got {describe(loss)}")
    if loss.ndim != 0 or not loss.is_floating_point():
        raise ValueError(
            f"loss_fn must return a 0-D floating-point tensor (a scalar loss, e.g. "
            f"reduction='mean'); got shape {tuple(loss.shape)} and dtype {loss.dtype}"
        )
    if not loss.requires_grad:
        raise ValueError(
            "loss_fn's result does not depend on the embeddings (it has no autograd graph): "
            "does loss_fn detach them or run under torch.no_grad()?"
        )


def _ddp_no_sync(encode: Any) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """``no_sync`` of a DistributedDataParallel ``encode`` (or of its bound method's owner)."""
    from torch.nn.parallel import DistributedDataParallel

    for candidate in (encode, getattr(encode, "__self__", None)):
        if isinstance(candidate, DistributedDataParallel):
            factory: Callable[[], contextlib.AbstractContextManager[Any]] = candidate.no_sync
            return factory
    return None


def _cuda_devices(inputs: Any) -> list[int]:
    """CUDA devices whose generators to replay: those of the inputs, when CUDA is initialised."""
    if not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return []
    return sorted(
        {x.device.index or 0 for _, x in _leaves(inputs, "inputs") if x.device.type == "cuda"}
    )


def _rng_state(devices: Sequence[int]) -> _State:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


@contextlib.contextmanager
def _replay(devices: Sequence[int], state: _State | None) -> Iterator[None]:
    """Run with the generators as they were in ``state``; restore them as they are, after."""
    assert state is not None
    with torch.random.fork_rng(devices=devices):
        cpu, cuda = state
        torch.set_rng_state(cpu)
        for device, device_state in zip(devices, cuda):
            torch.cuda.set_rng_state(device_state, device)
        yield
