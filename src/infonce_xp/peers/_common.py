"""What the peer modules share: the process group's gather for the peers' distributed flags,
and the checks of arguments the core does not see."""

from __future__ import annotations

from typing import Any

from .._checks import check_flag, describe
from .._namespaces import is_torch_tensor
from .._typing import Array

__all__ = ["check_flag", "no_argument", "torch_gather"]


def torch_gather(x: Array, enabled: bool, flag: str) -> Any:
    """``infonce_xp.torch.all_gather`` where ``enabled`` and ``torch.distributed`` runs more
    than one process, else None: the peers gather only then (and a single process behaves as
    if the flag were off, as theirs do)."""
    if not enabled:
        return None
    if not is_torch_tensor(x):
        raise TypeError(
            f"{flag}=True gathers over torch.distributed and needs torch tensors; got "
            f"{describe(x)}. For JAX, pass gather=infonce_xp.jax.all_gather(axis_name) to the "
            "core functions."
        )
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    from ..torch import all_gather

    return all_gather


def no_argument(name: str, value: Any, why: str) -> None:
    """Refuse a peer's call argument that we do not take (yet), naming it and why."""
    if value is not None:
        raise ValueError(f"{name} is not supported: {why}; got {describe(value)}")
