"""The checks that grad_cache makes of its batch and of encode's results, for any library."""

from __future__ import annotations

from typing import Any


def check_micro_batch(micro_batch: Any, *, expected: str = "int") -> None:
    """Check that ``micro_batch`` is a positive int; ``expected`` names one in the TypeError."""
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int):
        raise TypeError(f"micro_batch must be a positive {expected}; got {micro_batch!r}")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive int; got {micro_batch}")


def batch_size(sizes: dict[str, tuple[int, ...]], kind: str) -> int:
    """The rows that the leaves of ``inputs`` share, from each leaf's name and shape.

    ``kind`` names a leaf in the messages: "tensor" or "array".
    """
    if not sizes:
        raise ValueError(f"inputs must hold at least one {kind}; got none")
    for name, shape in sizes.items():
        if not shape:
            raise ValueError(f"every {kind} of inputs needs a batch axis 0; {name} is 0-D")
    rows = {name: shape[0] for name, shape in sizes.items()}
    if len(set(rows.values())) > 1:
        shown = ", ".join(f"{name}: {size}" for name, size in rows.items())
        raise ValueError(f"the {kind}s of inputs must share their number of rows; got {shown}")
    size = int(next(iter(rows.values())))
    if size == 0:
        raise ValueError("inputs must hold a non-empty batch; got 0 rows")
    return size


def check_rows(shapes: list[tuple[int, ...]], rows: int) -> None:
    """Check that ``encode`` returned at least one embedding, each with ``rows`` rows."""
    if not shapes or any(len(s) == 0 or s[0] != rows for s in shapes):
        raise ValueError(
            f"encode must return one row per input row: {rows} rows for a micro-batch of "
            f"{rows}; got shapes {shapes}"
        )


def check_towers(counts: list[int], kind: str) -> None:
    """Check that ``encode`` returned as many embeddings (``counts``) for every micro-batch."""
    for count in counts[1:]:
        if count != counts[0]:
            raise ValueError(
                f"encode must return the same number of {kind}s for every micro-batch; got "
                f"{counts[0]} then {count}"
            )


def describe(value: Any) -> str:
    """The type of ``value``, and of its items if it is a tuple or list, for a message."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"
