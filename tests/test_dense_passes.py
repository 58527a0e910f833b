"""What the dense cells execution writes: each tile's first-pass exponentials become its
responses, so a new way to score a row costs no new N x M array and no second ``exp``.

A ``TorchDispatchMode`` counts, during a forward and backward in torch, the ops whose result
has as many entries as the N x M logits: those that allocate a new array (out-of-place, not a
view) and the exponentials. N, M and D are chosen so that no (N, D) array is that large. The
values themselves are checked against the references in ``test_targets.py`` and
``test_recipes.py``; this pins the cost.
"""

from __future__ import annotations

from collections import Counter

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.backends("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from infonce_xp import info_nce  # noqa: E402

N, D, DT = 48, 4, 3  # in-batch: M = N; the teacher's width DT


class CountLarge(TorchDispatchMode):
    """Count the new N x M arrays and the exponentials over N x M entries."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(first, torch.Tensor) and first.numel() >= N * N:
            returns = func._schema.returns
            if returns and returns[0].alias_info is None:  # neither a view nor in place
                self.counts["new"] += 1
            if func._schema.name in ("aten::exp", "aten::exp_"):
                self.counts["exp"] += 1
        return out


def counts(**options):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(N, D, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(N, D, generator=gen, dtype=torch.float64, requires_grad=True)
    if options.pop("teacher", False):
        options["teacher"] = tuple(
            torch.randn(N, DT, generator=gen, dtype=torch.float64) for _ in "qk"
        )
    info_nce(q, k, **options).backward()  # first call: plans made, namespaces probed
    with CountLarge() as mode:
        info_nce(q, k, **options).backward()
    return mode.counts["new"], mode.counts["exp"]


# name: options, and the new N x M arrays and exps beyond the plain call's
OPTIONS = {
    "label_smoothing": ({"label_smoothing": 0.1}, 0, 0),
    "margin": ({"margin": 0.2}, 0, 0),
    "debiased_prior": ({"debiased_prior": 0.1}, 0, 0),
    "sample_weight": ({"sample_weight": torch.linspace(0.5, 1.5, N, dtype=torch.float64)}, 0, 0),
    # beta z and (1 + beta) z each need an exp, and one of them its own array
    "hardness_beta": ({"debiased_prior": 0.1, "hardness_beta": 1.0}, 1, 1),
    # the teacher's logits are an array, and an exp, of their own
    "teacher": ({"teacher": True, "teacher_temperature": 0.5}, 1, 1),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_dense_options_reuse_the_first_pass(name):
    options, more_new, more_exp = OPTIONS[name]
    plain_new, plain_exp = counts()
    assert (plain_new, plain_exp) == (1, 1)  # the logits, and one exp written over them
    assert counts(**options) == (plain_new + more_new, plain_exp + more_exp)
