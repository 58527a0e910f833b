"""``gather=``: the protocol, checked without a framework (NumPy, one worker).

The loss over several workers equals the single-process loss on the whole batch: that is
tested per framework, on the cases of ``_distributed_cases.py`` (which states how the numbers
must relate), in ``test_distributed_torch.py`` (2 and 3 gloo processes) and
``test_distributed_jax.py`` (2 and 4 virtual JAX devices), both marked ``slow``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import infonce_xp


def test_gather_needs_rank() -> None:
    """Our protocol: a gather callable without ``rank()`` is refused with a TypeError."""
    q, k = np.ones((2, 4, 3))
    with pytest.raises(TypeError, match="rank"):
        infonce_xp.info_nce(q, k, gather=lambda x: x)
    with pytest.raises(TypeError, match="gather must be None or a callable"):
        infonce_xp.info_nce(q, k, gather="all")


class _OneWorker:
    """The gather protocol for a single worker: gather and scatter are the identity."""

    def __call__(self, x: Any) -> Any:
        return x

    def rank(self) -> int:
        return 0

    def scatter(self, grad: Any) -> Any:
        return grad


@pytest.mark.parametrize("options", [{}, {"symmetric": True}, {"negative_keys": True}])
def test_value_and_grad_with_a_gather_on_numpy(options: dict[str, Any]) -> None:
    """Without autograd, the gathered keys' gradient comes back through ``gather.scatter``."""
    rng = np.random.default_rng(0)
    q, k, neg = rng.normal(size=(3, 6, 4))
    args = (q, k, neg) if options.pop("negative_keys", False) else (q, k)
    loss, grads = infonce_xp.info_nce_value_and_grad(*args, gather=_OneWorker(), **options)
    ref_loss, ref_grads = infonce_xp.info_nce_value_and_grad(*args, **options)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for got, ref in zip(grads, ref_grads):
        if ref is not None:
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
