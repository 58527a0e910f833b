"""Draw the digits training curves with and without ``--micro-batch`` (grad_cache), both frameworks.

    python docs/grad_cache_curves.py docs/_static/grad_cache_loss.png [--micro-batch 64]

Runs ``examples/train_torch.py`` and ``examples/train_jax.py`` (default options, 100 epochs)
twice each, once plainly and once with ``--micro-batch``, draws the per-epoch mean loss of the
four runs, and prints a Markdown table of their final losses and accuracies. Takes a minute or
two on a CPU; not run by the docs build (the figure is committed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, argv: list[str]) -> tuple[dict[str, float], list[float]]:
    """``main(argv)`` of an example, with the per-step losses it hands to ``_digits.report``."""
    sys.path.insert(0, str(EXAMPLES))
    import _digits

    module = __import__(script)
    captured: list[float] = []
    report = _digits.report

    def keep(results: Any, losses: list[float], *args: Any) -> None:
        captured.extend(losses)
        report(results, losses, *args)

    _digits.report = keep
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            results = module.main(argv)
    finally:
        _digits.report = report
    return results, captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    steps = 1257 // 256  # steps per epoch at the default batch of 256

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained", sharey=True)
    print("| framework | run | final loss | 5-NN test | 5-NN moved |")
    print("|---|---|---|---|---|")
    for ax, (script, title) in zip(axes, [("train_torch", "PyTorch"), ("train_jax", "JAX")]):
        for extra, label, style in [
            ([], "whole batch", {"lw": 3, "alpha": 0.4}),
            (["--micro-batch", str(args.micro_batch)], f"grad_cache, micro_batch={args.micro_batch}", {"lw": 1.2, "ls": "--", "color": "black"}),
        ]:  # fmt: skip
            results, losses = run(script, ["--epochs", str(args.epochs), *extra])
            per_epoch = np.reshape(losses, (-1, steps)).mean(axis=1)
            ax.plot(np.arange(1, len(per_epoch) + 1), per_epoch, label=label, **style)
            print(
                f"| {title} | {label} | {results['final_loss']:.4f} | "
                f"{results['learned']:.4f} | {results['learned_moved']:.4f} |",
                flush=True,
            )
        ax.set(title=f"{title}: InfoNCE on digits, batch 256", xlabel="epoch")
        ax.legend()
    axes[0].set(ylabel="epoch mean of the loss", ylim=(0, None))
    fig.savefig(args.out, dpi=120)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
