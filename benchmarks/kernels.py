"""Count the computing ATen ops (kernel launches) of one call, with ``torch.profiler``.

Importable on its own (``from kernels import count_kernels`` with benchmarks/ on the path): it
imports nothing from the other benchmark modules, and torch only when called.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

ALLOCATIONS = frozenset({"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_"})


def count_kernels(fn: Callable[[], Any], warmup: int = 1) -> Counter[str]:
    """How many times ``fn()`` runs each ATen op that computes; ``sum(...)`` is the total.

    ``fn`` should do all the work to count, e.g. a forward and ``.backward()``. It is run
    ``warmup`` times unprofiled first (lazy imports, caches), then once under
    ``torch.profiler`` on the CPU, every thread included (the backward may run in autograd's).

    What is counted: every ``aten::`` op event that computes and has no computing op below it,
    once per call. An op does not compute when it is

    - a view: its schema returns an alias of an input without writing it (``view``, ``t``,
      ``expand``, ``as_strided``, ``to`` and ``contiguous`` when they change nothing, ...);
    - an allocation: ``empty``, ``empty_like``, ``empty_strided``, ``resize_``;
    - a composite whose work is all done by ops below it (``linear``, ``cross_entropy``,
      ``matmul`` over ``mm``): its computing descendants are counted instead.

    So ``aten::mm``, whose only children are a ``resolve_conj`` view and an ``empty``, counts
    once, and ``aten::matmul`` above it does not. Counting only the profiler's childless events
    instead would miss every ``mm`` (and ``where``, ``clamp``, ``arange``); with that rule this
    function gives 7 fewer for infonce_xp in-batch and 5 fewer for the seed. In-place ops
    (``add_``, ``fill_``, ``copy_``) compute and count; so does ``scalar_tensor``, a fill.
    """
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: Counter[str] = Counter()

    def computing_below(event: Any) -> int:
        below = sum(computing_below(c) for c in event.cpu_children)
        if below == 0 and computes(event.name):
            counts[event.name] += 1
            return 1
        return below

    for event in prof.events():
        if event.cpu_parent is None:
            computing_below(event)
    return counts


@functools.cache
def computes(name: str) -> bool:
    """Whether the ATen op ``name`` computes: not an allocation, not a view (see above)."""
    import torch

    if not name.startswith("aten::") or name in ALLOCATIONS:
        return False
    packet = getattr(torch.ops.aten, name.removeprefix("aten::"), None)
    if packet is None:
        return True
    for overload in packet.overloads():
        returns = getattr(packet, overload)._schema.returns
        if returns and returns[0].alias_info is not None and not returns[0].alias_info.is_write:
            return False
    return True
