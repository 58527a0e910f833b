"""The distributed cases, shared by the tests and their workers: inputs, reference, comparison.

The test modules (``test_distributed_torch.py``, ``test_distributed_jax.py``) write the whole
batch of every case (``write_inputs``) to a directory; the workers
(``_distributed_torch_worker.py``, ``_distributed_jax_worker.py``) read it, each takes its
block of rows (``local_block``) and saves its results there; the tests compare them with the
seed on the whole batch (``reference``, ``compare``).

How the numbers must relate, with W workers (the contract of ``gather``):

- loss: the mean of the workers' losses ("mean"), their sum ("sum") or their rows one after
  the other ("none") is the single-process loss;
- input gradients: each worker's gradient of its own loss, divided by W as DDP averages it
  (by 1 for "sum"/"none", whose single-process objective is the plain sum over workers), is the
  single-process gradient of its rows; paired negatives stay local;
- a learned temperature: the workers' gradients, summed and divided the same way (DDP's
  average for "mean"), are the single-process gradient.

Imports only NumPy at import time (the workers import it too); ``reference`` needs torch and
the seed (``info-nce-pytorch``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROWS, DIM, UNPAIRED, PAIRED = 5, 8, 3, 4  # per worker: queries, features, negatives
TEMPERATURE = 0.07
INPUTS = ("query", "positive_key", "negative_keys")
# split by rows like the inputs, never differentiated: labels, sample weights, a teacher's rows
LABELS = ("labels", "negative_labels", "sample_weight", "teacher_query", "teacher_positive_key")
TEACHER = ("teacher_query", "teacher_positive_key")
CLASSES = 3  # few classes: every worker's rows have same-class rows on the other workers
TORCH_WORLDS, JAX_WORLDS = (2, 3), (2, 4)
LOCAL = ("local", "local-novma", "pmap")  # JAX patterns that differentiate each device's own loss


@dataclass(frozen=True)
class Case:
    negatives: str | None = None  # None (in-batch), "unpaired" or "paired"
    symmetric: bool = False
    chunk_size: int | None = None
    learn: bool = False  # a temperature array whose gradient is checked
    reduction: str = "mean"
    api: str = "function"  # "function", "class", "value_and_grad" or "module" (torch only)
    jax: tuple[str, ...] = ("reduced",)  # the JAX patterns (see _distributed_jax_worker.py)
    # the recipes (DESIGN.md): labelled rows (and unpaired negatives), supervised_info_nce
    labels: bool = False
    negative_labels: bool = False
    positives: str = "own"
    same_view: bool = False
    in_batch: bool | None = None
    supervised: bool = False
    decoupled: bool | str = False  # the decoupled loss (DCL), checked by the recipes' reference
    share: bool = False  # paired negatives shared by every query (gathered)
    hardness: str | None = None  # hardness_mode, with strength 2
    joint: tuple[str, ...] = ()  # joint_directions
    guide_margin: float | None = None  # false-negative masking by the model's own similarity
    targets: tuple[tuple[str, float], ...] = ()  # options of issue 23 (label_smoothing, ...)
    weights: bool = False  # sample_weight= (its rows local to each worker)
    teacher: bool = False  # teacher= embeddings (gathered with the keys)

    @property
    def recipe(self) -> bool:
        """Whether the recipes' reference checks this case (the seed has no such option)."""
        extras = (self.decoupled, self.share, self.hardness, self.joint, self.guide_margin)
        extras += (self.targets, self.weights, self.teacher)
        return self.labels or any(x not in (False, None, ()) for x in extras)

    def options(self) -> dict[str, Any]:
        """The loss's keyword options for this case."""
        if self.supervised:
            return {
                "reduction": self.reduction,
                "positives": self.positives,
                "chunk_size": self.chunk_size,
            }
        recipe = {}
        if self.recipe:
            recipe = {
                "positives": self.positives,
                "same_view_negatives": self.same_view,
                "in_batch_negatives": self.in_batch,
                "decoupled": self.decoupled,
                "share_negatives": self.share,
                "hardness_mode": self.hardness,
                "hardness_strength": 2.0 if self.hardness else 0.0,
                "joint_directions": self.joint,
                "guide_margin": self.guide_margin,
                **dict(self.targets),
            }
        return {
            "reduction": self.reduction,
            "negative_mode": self.negatives or "unpaired",
            "symmetric": self.symmetric,
            "chunk_size": self.chunk_size,
            **recipe,
        }


# chunk_size 2 or 3 with 5 rows per worker: blocks straddle the workers' boundaries, the last
# block is padded, and a worker's positives start inside a block.
CASES = {
    "in-batch": Case(jax=("reduced", "local", "local-novma", "pmap")),
    "in-batch-none": Case(reduction="none", jax=("reduced", "local")),
    "in-batch-sum": Case(reduction="sum", learn=True),
    "unpaired": Case("unpaired", jax=()),  # JAX: see the learned variants
    "paired": Case("paired", jax=()),
    "symmetric": Case(symmetric=True, jax=("reduced", "pmap")),
    "learned": Case(learn=True, jax=("reduced", "local", "local-novma", "pmap")),
    "unpaired-learned": Case("unpaired", learn=True),
    "paired-learned": Case("paired", learn=True),
    "symmetric-learned": Case(symmetric=True, learn=True, jax=("reduced", "local-novma")),
    "chunked": Case(chunk_size=3, learn=True),
    "chunked-symmetric": Case(
        symmetric=True, chunk_size=3, learn=True, jax=("reduced", "local-novma")
    ),
    "chunked-unpaired": Case("unpaired", chunk_size=2, learn=True),
    "chunked-paired": Case("paired", chunk_size=2, learn=True),
    "chunked-none": Case(symmetric=True, chunk_size=3, reduction="none", learn=True),
    "class": Case(symmetric=True, learn=True, api="class"),
    "value-and-grad": Case(
        "unpaired", learn=True, api="value_and_grad", jax=("local", "local-novma")
    ),
    "value-and-grad-symmetric": Case(
        symmetric=True, chunk_size=3, api="value_and_grad", jax=("local",)
    ),
    "module": Case(symmetric=True, api="module", jax=()),
    # Recipes. "pairs" means over each worker's own pairs, and SupCon's over its rows that
    # have a positive: with "none" (or "sum") the workers' numbers are the single process's.
    "labels-own": Case(labels=True, learn=True),
    "labels-supcon": Case(labels=True, positives="supcon", learn=True),
    "labels-pairs": Case(labels=True, positives="pairs", reduction="none"),
    "labels-nt-xent": Case(
        labels=True, positives="supcon", symmetric=True, same_view=True, reduction="sum"
    ),
    "labels-negatives": Case(
        "unpaired",
        labels=True,
        negative_labels=True,
        in_batch=True,
        positives="pairs",
        same_view=True,
        reduction="none",
        learn=True,
    ),
    "supervised": Case(labels=True, supervised=True, positives="supcon", reduction="none"),
    "labels-chunked": Case(
        labels=True,
        positives="pairs",
        symmetric=True,
        same_view=True,
        chunk_size=3,
        reduction="sum",
        learn=True,
    ),
    "decoupled": Case(decoupled=True, symmetric=True, same_view=True, learn=True),
    "decoupled-blocks-chunked": Case(
        "unpaired", decoupled="blocks", in_batch=True, chunk_size=2, reduction="none"
    ),
    "shared-hardness": Case(
        "paired", in_batch=True, share=True, hardness="in_batch_negatives", learn=True
    ),
    "joint-gte": Case(
        "paired",
        in_batch=True,
        share=True,
        same_view=True,
        joint=("key_to_key", "key_to_query"),
        hardness="all_negatives",
        learn=True,
    ),
    "self-guided": Case("unpaired", in_batch=True, same_view=True, guide_margin=0.05, learn=True),
    "joint-chunked": Case(joint=("key_to_key", "key_to_query"), chunk_size=2, reduction="none"),
    "shared-hard-chunked": Case(
        "paired", in_batch=True, share=True, hardness="hard_negatives", chunk_size=2
    ),
    # Targets beyond one-hot: "mean" over the workers' rows is the whole batch's where each
    # row weighs 1; sample weights are summed ("sum", "none"): each worker's mean divides by
    # its own weights.
    "smoothing-margin": Case(
        labels=True,
        symmetric=True,
        targets=(("label_smoothing", 0.1), ("margin", 0.2)),
        learn=True,
        jax=("reduced", "local"),
    ),
    "supcon-smoothing-chunked": Case(
        labels=True, positives="supcon", targets=(("label_smoothing", 0.2),), chunk_size=3
    ),
    "debiased-hcl": Case(
        "unpaired",
        in_batch=True,
        targets=(("debiased_prior", 0.1), ("hardness_beta", 1.0), ("margin", 0.1)),
        learn=True,
    ),
    "debiased-chunked": Case(
        targets=(("debiased_prior", 0.2),), chunk_size=2, reduction="none", learn=True
    ),
    "teacher-weights": Case(
        teacher=True,
        weights=True,
        targets=(("label_smoothing", 0.1), ("teacher_temperature", 0.5)),
        reduction="sum",
        learn=True,
    ),
    "teacher-weights-chunked": Case(
        teacher=True, weights=True, symmetric=True, chunk_size=3, reduction="none"
    ),
}


def key(world: int, name: str) -> str:
    return f"{world}/{name}"


def make_inputs() -> dict[str, np.ndarray]:
    """Every case for every world size: the whole batch, float64, of W * ROWS queries."""
    rng = np.random.default_rng(20240607)
    inputs = {}
    for world in sorted({*TORCH_WORLDS, *JAX_WORLDS}):
        n = world * ROWS
        for name, case in CASES.items():
            k = key(world, name)
            query = inputs[f"{k}/query"] = rng.normal(size=(n, DIM))
            # keys correlated with their queries, so that the loss is not flat
            if not case.supervised:
                inputs[f"{k}/positive_key"] = query + 0.5 * rng.normal(size=(n, DIM))
            if case.labels:
                inputs[f"{k}/labels"] = rng.integers(0, CLASSES, size=n)
            if case.weights:
                inputs[f"{k}/sample_weight"] = rng.uniform(0.0, 2.0, size=n)
            for name in TEACHER if case.teacher else ():
                inputs[f"{k}/{name}"] = rng.normal(size=(n, DIM - 2))
            if case.negative_labels:
                inputs[f"{k}/negative_labels"] = rng.integers(0, CLASSES, size=world * UNPAIRED)
            if case.negatives == "unpaired":
                inputs[f"{k}/negative_keys"] = rng.normal(size=(world * UNPAIRED, DIM))
            elif case.negatives == "paired":
                inputs[f"{k}/negative_keys"] = rng.normal(size=(n, PAIRED, DIM))
            if case.reduction == "none":
                inputs[f"{k}/grad_output"] = rng.uniform(0.5, 1.5, size=n)
            inputs[f"{k}/temperature"] = np.asarray(TEMPERATURE)
    return inputs


def write_inputs(directory: Path) -> dict[str, np.ndarray]:
    inputs = make_inputs()
    np.savez(directory / "inputs.npz", **inputs)
    return inputs


def read_inputs(directory: Path) -> dict[str, np.ndarray]:
    with np.load(directory / "inputs.npz") as data:
        return {k: data[k] for k in data.files}


def local_block(
    inputs: dict[str, np.ndarray], k: str, rank: int, world: int
) -> dict[str, np.ndarray]:
    """This worker's rows: of the queries, their keys and paired negatives, and of unpaired negatives."""
    out = {}
    for field in (*INPUTS, *LABELS, "grad_output"):
        full = inputs.get(f"{k}/{field}")
        if full is None:
            continue
        rows = full.shape[0] // world
        out[field] = full[rank * rows : (rank + 1) * rows]
    out["temperature"] = inputs[f"{k}/temperature"]
    return out


def call(case: Case, args: list[Any], labels: dict[str, Any], temperature: Any, gather: Any) -> Any:
    """The function API's loss of a recipe case (``supervised_info_nce`` or ``info_nce``)."""
    import infonce_xp

    labels = dict(labels)
    if TEACHER[0] in labels:
        labels["teacher"] = tuple(labels.pop(name) for name in TEACHER)
    if case.supervised:
        return infonce_xp.supervised_info_nce(
            *args, labels["labels"], temperature, gather=gather, **case.options()
        )
    return infonce_xp.info_nce(
        *args, temperature=temperature, gather=gather, **labels, **case.options()
    )


def recipe_reference(case: Case, inputs: dict[str, np.ndarray], k: str) -> dict[str, Any]:
    """``infonce_xp`` in one process on the whole batch (float64 torch autograd), its loss
    checked against the float64 reference of ``reference_recipes.py``."""
    import torch

    from reference_recipes import recipe_loss, supervised_loss
    from reference_targets import target_loss

    arrays = {n: inputs[f"{k}/{n}"] for n in INPUTS if f"{k}/{n}" in inputs}
    labels = {n: inputs[f"{k}/{n}"] for n in LABELS if f"{k}/{n}" in inputs}
    tensors = {n: torch.tensor(a, requires_grad=True) for n, a in arrays.items()}
    t = torch.tensor(TEMPERATURE, dtype=torch.float64, requires_grad=True)
    labelled = {n: torch.asarray(v) for n, v in labels.items()}
    loss = call(case, list(tensors.values()), labelled, t if case.learn else TEMPERATURE, None)
    grad_output = inputs.get(f"{k}/grad_output")
    (loss * (1.0 if grad_output is None else torch.tensor(grad_output))).sum().backward()
    opts = {n: v for n, v in case.options().items() if n != "chunk_size"}
    if case.supervised:
        expected = supervised_loss(
            arrays["query"], labels["labels"], TEMPERATURE, case.positives, case.reduction
        )
    elif case.targets or case.weights or case.teacher:
        data = dict(labels)
        if case.teacher:
            data["teacher"] = tuple(data.pop(name) for name in TEACHER)
        expected = target_loss(*arrays.values(), temperature=TEMPERATURE, **data, **opts)
    else:
        expected = recipe_loss(*arrays.values(), temperature=TEMPERATURE, **labels, **opts)
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    out = {"loss": loss.detach().numpy()}
    out.update({n: x.grad.numpy() for n, x in tensors.items()})
    if case.learn:
        out["temperature"] = t.grad.numpy()
    return out


def reference(case: Case, inputs: dict[str, np.ndarray], k: str) -> dict[str, np.ndarray]:
    """The seed (info-nce-pytorch) on the whole batch: loss and float64 autograd gradients;
    for the recipes, ``recipe_reference``."""
    if case.recipe:
        return recipe_reference(case, inputs, k)
    import torch
    from info_nce import info_nce as seed

    tensors = {
        n: torch.tensor(inputs[f"{k}/{n}"], requires_grad=True)
        for n in INPUTS
        if f"{k}/{n}" in inputs
    }
    leaf = None
    temperature: Any = TEMPERATURE
    if case.api == "module":
        # the module's parameter is float32 (torch's default), then .double() in the worker
        leaf = torch.tensor(math.log(1 / TEMPERATURE)).double().requires_grad_()
        temperature = torch.exp(-leaf)
    elif case.learn:
        leaf = temperature = torch.tensor(TEMPERATURE, dtype=torch.float64, requires_grad=True)
    q, p, neg = tensors["query"], tensors["positive_key"], tensors.get("negative_keys")
    options = {"temperature": temperature, "reduction": case.reduction}
    if case.symmetric:
        loss = (seed(q, p, **options) + seed(p, q, **options)) / 2
    else:
        loss = seed(q, p, neg, negative_mode=case.negatives or "unpaired", **options)
    grad_output = inputs.get(f"{k}/grad_output")
    (loss * (1.0 if grad_output is None else torch.tensor(grad_output))).sum().backward()
    out = {"loss": loss.detach().numpy()}
    out.update({n: t.grad.numpy() for n, t in tensors.items()})
    if leaf is not None:
        out["log_inverse_temperature" if case.api == "module" else "temperature"] = (
            leaf.grad.numpy()
        )
    return out


def compare(case: Case, got: dict[str, Any], want: dict[str, np.ndarray], scale: float) -> None:
    """``got``: the workers' losses (stacked or concatenated), the concatenated input gradients and
    the summed temperature gradient; ``scale``: what the gradients are divided by."""
    tol = {"rtol": 1e-9, "atol": 1e-11}
    reduce = {"mean": np.mean, "sum": np.sum, "none": np.asarray}[case.reduction]
    np.testing.assert_allclose(reduce(got["loss"]), want["loss"], **tol, err_msg="loss")
    for name, expected in want.items():
        if name != "loss":
            assert name in got, f"no gradient for {name}"
            np.testing.assert_allclose(
                got[name] / scale, expected, **tol, err_msg=f"gradient of {name}"
            )
