"""Independent oracles for the targets beyond one-hot: ``torch.nn.functional.cross_entropy``
(``label_smoothing=e``, probability targets for the teacher) over logits built here in torch,
with the margin subtracted from the positives' cosines and the sample weights applied by hand;
and the port of joshr17/HCL's ``criterion`` (``reference_targets.hcl_criterion``) for
``debiased_prior`` / ``hardness_beta``, values and autograd gradients in float64.

Each oracle vouches for the float64 reference of ``reference_targets.py`` (no ``infonce_xp``
needed) and holds the library to it on every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

import infonce_xp
from reference import finite_difference
from reference_targets import hcl_criterion, target_loss
from test_recipes import F64

torch = pytest.importorskip("torch")
F = torch.nn.functional

N, M, D, T = 7, 4, 5, 0.3
LABELS = np.array([0, 1, 0, 2, 1, 0, 3])
# name: the library's options of the setup (labels added by ``problem``)
SETUPS = {
    "in-batch": {},
    "unpaired": {},
    "paired": {"negative_mode": "paired"},
    "symmetric": {"symmetric": True},
    "same-view+symmetric": {"same_view_negatives": True, "symmetric": True},
    "labelled/own": {"positives": "own"},
    "labelled/supcon": {"positives": "supcon"},
}
# name: (label_smoothing, margin, teacher_temperature or None for no teacher, weighted)
OPTIONS = {
    "smoothing": (0.2, 0.0, None, False),
    "margin": (0.0, 0.3, None, False),
    "smoothing+margin+weights": (0.1, 0.2, None, True),
    "teacher": (0.0, 0.0, 0.5, False),
    "teacher+smoothing+margin+weights": (0.3, 0.2, 2.0, True),
}


def problem(setup, seed=0):
    """(q, k, negatives), the teacher's (width 3), weights (one 0) and the options."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(N, D))
    k = q + rng.normal(size=(N, D))
    shape = {"unpaired": (M,), "paired": (N, M)}.get(setup)
    neg = None if shape is None else rng.normal(size=(*shape, D))
    tq = rng.normal(size=(N, 3))
    tk = tq + rng.normal(size=(N, 3))
    teacher = (tq, tk) if shape is None else (tq, tk, rng.normal(size=(*shape, 3)))
    w = rng.uniform(0.0, 2.0, size=N)
    w[2] = 0.0
    options = dict(SETUPS[setup])
    if setup.startswith("labelled"):
        options["labels"] = LABELS
    return (q, k, neg), teacher, w, options


def directions(setup, arrays):
    """Per direction: the similarities S (N, C) of each anchor with its candidates, the
    positives P and the kept cells (the same-class ones hidden with "own"), in torch."""
    q, k, neg = (
        None if a is None else F.normalize(torch.asarray(a), dim=-1) for a in (*arrays, None)[:3]
    )
    eye = torch.eye(N, dtype=torch.bool)
    full = torch.ones(N, N, dtype=torch.bool)

    def in_batch(a, b, same_view=False):
        s, p = a @ b.T, eye
        if same_view:  # the other anchors, the anchor itself hidden
            s = torch.cat([s, (a @ a.T)[~eye].view(N, N - 1)], dim=1)
            p = torch.cat([p, torch.zeros(N, N - 1, dtype=torch.bool)], dim=1)
        return s, p, torch.ones_like(p)

    if setup in ("unpaired", "paired"):
        negatives = q @ neg.T if setup == "unpaired" else torch.einsum("nd,nmd->nm", q, neg)
        s = torch.cat([(q * k).sum(dim=1, keepdim=True), negatives], dim=1)
        p = torch.zeros_like(s, dtype=torch.bool)
        p[:, 0] = True
        return [(s, p, torch.ones_like(p))]
    if setup == "in-batch":
        return [in_batch(q, k)]
    if setup.startswith("labelled"):
        same = torch.asarray(LABELS[:, None] == LABELS[None, :])
        if setup == "labelled/supcon":
            return [(q @ k.T, same, full)]
        return [(q @ k.T, eye, ~(same & ~eye))]
    same_view = setup == "same-view+symmetric"
    return [in_batch(q, k, same_view), in_batch(k, q, same_view)]


def oracle(setup, arrays, teacher, w, option, reduction):
    """The loss from ``F.cross_entropy`` over each row's kept logits (s - m [positive]) / t."""
    e, m, teacher_temperature, weighted = OPTIONS[option]
    rows = []
    teacher_directions = directions(setup, teacher) if teacher_temperature else None
    for index, (s, p, keep) in enumerate(directions(setup, arrays)):
        logits = (s - m * p.double()) / T
        if teacher_directions is not None:
            ts = teacher_directions[index][0] / teacher_temperature
        direction = []
        for i in range(N):
            z = logits[i, keep[i]][None]
            positives = p[i, keep[i]]
            if teacher_directions is not None:
                target = torch.softmax(ts[i, keep[i]], dim=0)[None]
            elif positives.sum() == 1:
                target = torch.nonzero(positives)[0]  # a class index
            else:  # supcon: the positives share 1 - e evenly
                target = (positives.double() / positives.sum())[None]
            direction.append(F.cross_entropy(z, target, label_smoothing=e))
        rows.append(torch.stack(direction))
    loss = (sum(rows) / len(rows)).numpy()
    weights = w if weighted else np.ones(N)
    return {
        "none": weights * loss,
        "mean": np.asarray((weights * loss).sum() / weights.sum()),
        "sum": np.asarray((weights * loss).sum()),
    }[reduction]


def options_of(option, teacher, w):
    e, m, teacher_temperature, weighted = OPTIONS[option]
    out = {"label_smoothing": e, "margin": m}
    if teacher_temperature:
        out |= {"teacher": teacher, "teacher_temperature": teacher_temperature}
    if weighted:
        out["sample_weight"] = w
    return out


CROSS_ENTROPY = [(s, o) for s in SETUPS for o in OPTIONS]


@pytest.mark.parametrize(("setup", "option"), CROSS_ENTROPY)
def test_reference_is_cross_entropy(setup, option):
    arrays, teacher, w, options = problem(setup)
    for reduction in ("none", "mean", "sum"):
        want = oracle(setup, arrays, teacher, w, option, reduction)
        got = target_loss(
            *arrays, temperature=T, reduction=reduction, **options, **options_of(option, teacher, w)
        )
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=reduction)


@pytest.mark.parametrize(("setup", "option"), CROSS_ENTROPY)
def test_library_is_cross_entropy(backend, setup, option):
    arrays, teacher, w, options = problem(setup)
    target = options_of(option, teacher, w)
    if "teacher" in target:
        target["teacher"] = tuple(backend.asarrays(*teacher))
    if "sample_weight" in target:
        target["sample_weight"] = backend.asarray(w)
    if "labels" in options:
        options["labels"] = backend.asarray(options["labels"])
    for reduction in ("none", "mean"):
        got = infonce_xp.info_nce(
            *backend.asarrays(*arrays), temperature=T, reduction=reduction, **options, **target
        )
        want = oracle(setup, arrays, teacher, w, option, reduction)
        backend.assert_close(got, want, **F64, err_msg=reduction)


# joshr17/HCL --------------------------------------------------------------------------

# (debiased_prior tau+, hardness_beta, temperature)
HCL = [(0.1, 0.0, 0.5), (0.0, 0.5, 0.5), (0.1, 1.0, 0.2), (0.3, 2.0, 0.5), (0.05, 0.3, 0.1)]
SIMCLR = {"same_view_negatives": True, "symmetric": True}  # HCL's 2B anchors, 2B - 2 negatives


def hcl_problem(n=6, seed=2):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, D))
    return q, q + 0.7 * rng.normal(size=(n, D))


def hcl(q, k, tau, beta, t, estimator="hard", detach_weights=False):
    """The port's value and its autograd gradients wrt q, k and the temperature."""
    leaves = [torch.tensor(a, requires_grad=True) for a in (q, k, np.asarray(t))]
    loss = hcl_criterion(*leaves[:2], tau, beta, estimator, leaves[2], detach_weights)
    loss.backward()
    return loss.item(), [leaf.grad.numpy() for leaf in leaves]


@pytest.mark.parametrize(("tau", "beta", "t"), HCL)
def test_reference_is_hcl(tau, beta, t):
    """Values and gradients (finite differences of the reference, HCL's weights in the graph)."""
    q, k = hcl_problem()
    value, grads = hcl(q, k, tau, beta, t)
    options = {"debiased_prior": tau, "hardness_beta": beta, **SIMCLR}

    def loss(q, k, t):
        return float(target_loss(q, k, temperature=t, **options))

    np.testing.assert_allclose(loss(q, k, t), value, rtol=1e-12)
    fd = [
        finite_difference(lambda x: loss(x, k, t), q),
        finite_difference(lambda x: loss(q, x, t), k),
        finite_difference(lambda x: loss(q, k, float(x)), np.asarray(t)),
    ]
    for name, a, b in zip(("query", "positive_key", "temperature"), fd, grads):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8, err_msg=name)


def test_hcl_easy_is_the_plain_loss():
    q, k = hcl_problem()
    value, _ = hcl(q, k, 0.0, 0.0, 0.2, "easy")
    np.testing.assert_allclose(float(target_loss(q, k, temperature=0.2, **SIMCLR)), value)


def test_detached_weights_would_be_told_apart():
    """Were the weights w detached, the gradients would differ well beyond the tolerances."""
    q, k = hcl_problem()
    _, kept = hcl(q, k, 0.1, 1.0, 0.2)
    _, detached = hcl(q, k, 0.1, 1.0, 0.2, detach_weights=True)
    for a, b in zip(kept, detached):
        assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()


@pytest.mark.parametrize(("tau", "beta", "t"), [*HCL, (0.0, 0.0, 0.2)])
def test_library_is_hcl(backend, tau, beta, t):
    """``info_nce_value_and_grad`` (the analytic backward) against HCL's autograd."""
    q, k = hcl_problem()
    estimator = "easy" if tau == beta == 0 else "hard"
    value, grads = hcl(q, k, tau, beta, t, estimator)
    loss, got = infonce_xp.info_nce_value_and_grad(
        *backend.asarrays(q, k),
        temperature=backend.asarray(np.asarray(t)),
        debiased_prior=tau,
        hardness_beta=beta,
        **SIMCLR,
    )
    backend.assert_close(loss, np.asarray(value), **F64)
    backend.assert_close(got[0], grads[0], **F64, err_msg="query")
    backend.assert_close(got[1], grads[1], **F64, err_msg="positive_key")
    assert got[2] is None
    backend.assert_close(got[3], np.asarray(grads[2]), **F64, err_msg="temperature")


@pytest.mark.backends("torch")
@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize(("tau", "beta", "t"), HCL)
def test_torch_autograd_is_hcl(tau, beta, t, chunk_size):
    import infonce_xp.torch as itorch

    q, k = hcl_problem()
    value, grads = hcl(q, k, tau, beta, t)
    leaves = [torch.tensor(a, requires_grad=True) for a in (q, k)]
    loss_fn = itorch.InfoNCE(
        t, debiased_prior=tau, hardness_beta=beta, chunk_size=chunk_size, **SIMCLR
    )
    loss = loss_fn(*leaves)
    loss.backward()
    np.testing.assert_allclose(loss.item(), value, **F64)
    for leaf, want in zip(leaves, grads):
        np.testing.assert_allclose(leaf.grad.numpy(), want, **F64)
