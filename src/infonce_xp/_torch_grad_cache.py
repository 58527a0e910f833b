"""Gradient caching for torch: a loss over a batch whose encoder activations do not fit at once.

From ``infonce_xp`` it imports only the library-agnostic checks of ``_micro_batches``; it
calls the user's ``encode`` and ``loss_fn``.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.parameter import is_lazy

from ._micro_batches import batch_size, check_micro_batch, check_rows, check_towers, describe

__all__ = ["grad_cache"]

_State = tuple[torch.Tensor, list[torch.Tensor]]  # the CPU generator, then each CUDA device's
_COMPILE_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"


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

    Module state is counted once: the graph-free pass leaves the buffers of the modules that
    ``encode`` runs (BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked``,
    say) as it found them, and the pass with the graph updates them, one micro-batch after
    the other, as encoding the micro-batches by hand would. A batch in one micro-batch leaves
    them exactly as plain training does. The modules are found as they run (a global forward
    pre-hook, for this thread, during the graph-free pass), so ``encode`` may be a module, a
    bound method or a closure over one.

    Both passes run in the caller's autocast state; each embedding's gradient is cast to that
    embedding's dtype.

    Parameters
    ----------
    encode : callable
        ``encode(batch)`` maps a micro-batch of ``inputs`` (the same structure, fewer rows) to
        the embeddings: a tensor (one tower) or a tuple of tensors (one per tower, e.g.
        ``(query, key)``), each with one row per input row.
    inputs : tensor, or tuple, list or dict of them (nested)
        The whole batch: a pytree whose tensors all share the batch axis 0. ``encode``
        receives the same types (a ``defaultdict``, ``OrderedDict``, namedtuple or any other
        dict, mutable mapping, tuple or list subclass is rebuilt as one).
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
        ``encode`` returns something other than floating-point tensors (checked on the first
        micro-batch, before the loss), or ``loss_fn`` returns no tensor.
    ValueError
        If ``micro_batch`` is not positive, the batch is empty, the tensors of ``inputs``
        differ in their number of rows, ``encode`` returns the wrong number of rows or towers,
        or embeddings whose width, dtype or device change between micro-batches, or
        ``loss_fn`` returns no 0-D floating-point tensor that depends on the embeddings.

    Notes
    -----
    The parameters of ``loss_fn`` (a learned temperature) receive their gradient outside the
    DDP module's forward: under DDP, average it over workers yourself (or keep it fixed).
    The encoder runs twice per micro-batch, so a step costs about one more forward pass than
    plain training. BatchNorm sees micro-batch statistics, as in any micro-batching. Besides
    one micro-batch's activations, a step holds the embeddings and their gradient (written
    into one tensor per tower, allocated once) and a copy of the buffers of the modules that
    ``encode`` runs.

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

    with torch.no_grad(), _buffers_restored():
        embeddings, states = _embed(encode, inputs, starts, rows, devices)
    with torch.enable_grad():
        loss = loss_fn(*embeddings)
        _check_loss(loss)
        torch.autograd.backward(loss)
    grads = [e.grad for e in embeddings]
    # Free the embeddings (their rows are encoded again below, with their graph): the loss's
    # graph holds them too, so it goes as well.
    loss = loss.detach()
    del embeddings

    for i, start in enumerate(starts):
        stop = min(start + micro_batch, rows)
        last = i == len(starts) - 1
        context = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with context, _replay(devices, _state(states, i)), torch.enable_grad():
            out = _embeddings(encode(_rows(inputs, start, stop)), stop - start, len(grads))
            pairs = [
                (e, g[start:stop].to(e.dtype))
                for e, g in zip(out, grads)
                if g is not None and e.requires_grad
            ]
            if pairs:
                torch.autograd.backward([e for e, _ in pairs], [g for _, g in pairs])
            del out, pairs  # before the next micro-batch's activations are allocated
    return loss


def _embed(
    encode: Callable[[Any], Any],
    inputs: Any,
    starts: range,
    rows: int,
    devices: Sequence[int],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every micro-batch's embeddings (no graph), and the random state before each micro-batch.

    The embeddings are written into one tensor per tower, allocated once: a list of pieces and
    a concatenation would hold the batch twice, and the pieces, kept between the micro-batches'
    freed activations, fragment the heap. The random states are rows of one tensor per
    generator (the CPU one, then each CUDA device's) for the same reason.
    """
    embeddings: list[torch.Tensor] = []
    states = [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices)]
    states = [torch.empty((len(starts), *s.shape), dtype=s.dtype) for s in states]
    for i, start in enumerate(starts):
        stop = min(start + starts.step, rows)
        states[0][i] = torch.get_rng_state()
        for stack, device in zip(states[1:], devices):
            stack[i] = torch.cuda.get_rng_state(device)
        out = _embeddings(encode(_rows(inputs, start, stop)), stop - start, len(embeddings))
        if not embeddings:
            embeddings = [e.new_empty((rows, *e.shape[1:])) for e in out]
        for tower, (whole, e) in enumerate(zip(embeddings, out)):
            _check_like(e, whole, tower)
            whole[start:stop] = e
        del out
    return [e.requires_grad_() for e in embeddings], states


def _check(inputs: Any, micro_batch: Any) -> int:
    """The batch size, after checking ``micro_batch`` and that the leaves share it."""
    check_micro_batch(micro_batch)
    sizes = {path: tuple(x.shape) for path, x in _leaves(inputs, "inputs")}
    return batch_size(sizes, "tensor")


def _leaves(tree: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield path, tree
    elif isinstance(tree, (dict, MutableMapping)):
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
    """Rows ``start:stop`` of every tensor of the pytree, in the same structure and types.

    A mapping or list is copied (``copy.copy``: its type, and a ``defaultdict``'s factory or a
    subclass's attributes, whatever its constructor takes) and its items replaced; a namedtuple
    is rebuilt by ``_make``, another tuple from an iterable.
    """
    if isinstance(tree, torch.Tensor):
        return tree[start:stop]
    if isinstance(tree, (dict, MutableMapping)):
        mapping = copy.copy(tree)
        for key, value in tree.items():
            mapping[key] = _rows(value, start, stop)
        return mapping
    parts = [_rows(value, start, stop) for value in tree]
    if isinstance(tree, list):
        rebuilt = copy.copy(tree)
        rebuilt[:] = parts
        return rebuilt
    if hasattr(tree, "_make"):  # a namedtuple: its constructor takes the fields one by one
        return tree._make(parts)
    return type(tree)(parts)


def _embeddings(out: Any, rows: int, towers: int) -> tuple[torch.Tensor, ...]:
    """``encode``'s result as a tuple of tensors, after checking it (``towers``: 0 if unknown)."""
    out = (out,) if isinstance(out, torch.Tensor) else out
    if not isinstance(out, (tuple, list)) or not all(isinstance(e, torch.Tensor) for e in out):
        raise TypeError(
            "encode must return a tensor or a tuple of tensors (one per tower); "
            f"got {describe(out)}"
        )
    if towers:
        check_towers([towers, len(out)], "tensor")
    check_rows([tuple(e.shape) for e in out], rows)
    for tower, e in enumerate(out):
        if not e.is_floating_point():
            raise TypeError(
                "encode must return floating-point embeddings (the loss's gradient flows "
                f"back through them); got tower {tower} of dtype {e.dtype} and shape "
                f"{tuple(e.shape)}"
            )
    return tuple(out)


def _check_like(embedding: torch.Tensor, whole: torch.Tensor, tower: int) -> None:
    """Check that a micro-batch's embedding has the first one's width, dtype and device."""
    got = (tuple(embedding.shape[1:]), embedding.dtype, embedding.device)
    want = (tuple(whole.shape[1:]), whole.dtype, whole.device)
    if got != want:
        raise ValueError(
            "encode must return embeddings of the same shape (but for the rows), dtype and "
            f"device for every micro-batch; tower {tower} was {_show(*want)}, then {_show(*got)}"
        )


def _show(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> str:
    return f"({', '.join(['rows', *map(str, shape)])}) {dtype} on {device}"


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


def _state(stacks: Sequence[torch.Tensor], i: int) -> _State:
    """The generators' state before micro-batch ``i``, from ``_embed``'s stacks of them."""
    # set_rng_state wants a tensor of its own: a row of the stack is copied
    cpu, *cuda = (stack[i].clone() for stack in stacks)
    return cpu, cuda


@contextlib.contextmanager
def _replay(devices: Sequence[int], state: _State) -> Iterator[None]:
    """Run with the generators as they were in ``state``; restore them as they are, after."""
    with torch.random.fork_rng(devices=devices):
        cpu, cuda = state
        torch.set_rng_state(cpu)
        for device, device_state in zip(devices, cuda):
            torch.cuda.set_rng_state(device_state, device)
        yield


@contextlib.contextmanager
def _buffers_restored() -> Iterator[None]:
    """Leave the buffers of every module that runs inside (in this thread) as they were.

    A global forward pre-hook sees each module before it first runs, and copies its buffers
    and its submodules' (``running_mean``, ``num_batches_tracked``, a spectral norm's ``u``,
    ...); on exit, a buffer that changed gets its copy back, and one that was replaced by
    another tensor is put back. Modules are found as they run because ``encode`` may be any
    callable: a closure over a model, a bound method, a DDP module.

    ``grad_cache`` restores once, after every micro-batch's graph-free pass, not after each:
    the passes go through the states that the replays, starting again from the first, go
    through in turn, so the two passes of a micro-batch see the same buffers (and give the
    same embeddings where a buffer changes the output), and the replays count once.
    """
    owner = threading.get_ident()
    seen: dict[int, torch.nn.Module] = {}  # holding the modules: their ids cannot be reused
    saved: list[tuple[torch.nn.Module, str, torch.Tensor, torch.Tensor]] = []

    def save(module: torch.nn.Module, args: Any) -> None:
        if id(module) in seen or threading.get_ident() != owner:
            return
        for sub in module.modules():
            if id(sub) in seen:
                continue  # saved with another module that ran before
            seen[id(sub)] = sub
            for name, buffer in sub._buffers.items():
                if buffer is not None and not is_lazy(buffer):
                    saved.append((sub, name, buffer, buffer.clone()))

    handle = register_module_forward_pre_hook(save)
    try:
        with warnings.catch_warnings():
            # torch.compile'd modules warn of any global hook; this one is meant to see them
            warnings.filterwarnings("ignore", _COMPILE_WARNING, UserWarning)
            yield
    finally:
        handle.remove()
        with torch.no_grad():
            for module, name, buffer, copy_ in saved:
                if module._buffers.get(name) is not buffer:
                    module._buffers[name] = buffer
                if not torch.equal(buffer, copy_):
                    buffer.copy_(copy_)
