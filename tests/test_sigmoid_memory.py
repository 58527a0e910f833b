"""Resident memory of the tiled sigmoid loss (issue 24's tiled memory probe), in a fresh process.

test_memory_tiled's child, with its import line replaced so that its ``info_nce`` is
``sigmoid_loss`` (at its defaults: temperature 0.1, bias -10): the child builds the inputs, warms
the code paths up on a small call, resets the kernel's high-water mark of its resident size
(``/proc/self/clear_refs``) and runs one forward and backward; the peak (VmHWM) above what was
resident before is what a user sees, the C heap's retained pages included.
"""

from __future__ import annotations

import os

import pytest

MIB = 1 << 20
# the import line of test_memory_tiled's child, and its replacement
CHILD_IMPORT = "from infonce_xp import info_nce, info_nce_value_and_grad\n"
SIGMOID_IMPORT = (
    "from infonce_xp import sigmoid_loss as info_nce, "
    "sigmoid_loss_value_and_grad as info_nce_value_and_grad\n"
)
N, D, CHUNK = 32768, 128, 1024
# A safe lower estimate of the dense peak (open_clip's SigLipLoss holds about six N x N float32
# matrices, the benchmarks' sigmoid section measures): the logits, the labels and the gradient.
DENSE_LOWER = 3 * 4 * N * N  # 12 GiB at N = 32768
BOUND = 0.05 * DENSE_LOWER  # 614 MiB: 15 % of one N x N float32 matrix


@pytest.mark.slow
@pytest.mark.backends("torch")
def test_tiled_sigmoid_loss_peaks_far_below_the_dense_call(monkeypatch):
    """torch, N = 32768, D = 128, chunk_size=1024: one forward and backward peaks below 5 % of
    three N x N float32 matrices above its inputs (160 to 235 MiB were measured on Linux x86-64,
    glibc's default allocator; open_clip's dense call, about 20 GiB)."""
    pytest.importorskip("torch")
    import test_memory_tiled

    clear_refs = test_memory_tiled.CLEAR_REFS
    if not os.access(clear_refs, os.W_OK):
        pytest.skip(f"the peak of one call needs a resettable VmHWM ({clear_refs} is not writable)")
    assert CHILD_IMPORT in test_memory_tiled.CHILD, "test_memory_tiled's child changed its import"
    monkeypatch.setattr(
        test_memory_tiled, "CHILD", test_memory_tiled.CHILD.replace(CHILD_IMPORT, SIGMOID_IMPORT)
    )
    got = test_memory_tiled.peaks("torch", N, D, [CHUNK], timeout=900)[CHUNK]
    assert got < BOUND, (
        f"N={N}: {got / MIB:.0f} MiB above the inputs, bound {BOUND / MIB:.0f} MiB "
        f"({got / DENSE_LOWER:.2%} of three N x N float32 matrices)"
    )
