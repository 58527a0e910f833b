"""CUDA-graph safety: a forward + backward captured by ``torch.cuda.graph`` and by
``torch.compile(mode="reduce-overhead")`` replays with new data and gives eager's numbers.

Capture fails on a host synchronisation or a shape that depends on data, which the per-call
code must not have (``test_host_sync.py`` pins that on the CPU). These tests run in the
``torch-cuda`` nox session, on a machine with a CUDA device.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.backends("torch-cuda")

from infonce_xp import info_nce  # noqa: E402

CASES = {
    "in-batch": dict(),
    "unpaired": dict(negatives=(48, 32)),
    "paired": dict(negatives=(16, 3, 32), negative_mode="paired"),
    "symmetric": dict(symmetric=True),
    "tiled": dict(chunk_size=5),
    "labels": dict(labels=True, positives="supcon"),
}


def arrays(case, seed):
    spec = dict(CASES[case])
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k = (torch.randn(16, 32, device="cuda", generator=gen) for _ in range(2))
    shape = spec.pop("negatives", None)
    neg = None if shape is None else torch.randn(*shape, device="cuda", generator=gen)
    if spec.pop("labels", False):
        spec["labels"] = torch.randint(0, 4, (16,), device="cuda", generator=gen)
    return q, k, neg, spec


def eager(q, k, neg, options):
    q, k = (x.clone().requires_grad_() for x in (q, k))
    loss = info_nce(q, k, neg, **options)
    loss.backward()
    return loss.detach(), q.grad, k.grad


@pytest.mark.parametrize("case", list(CASES))
def test_cuda_graph_capture_replays_eagers_numbers(case):
    q0, k0, neg0, options = arrays(case, 0)
    q, k = (x.clone().requires_grad_() for x in (q0, k0))
    neg = None if neg0 is None else neg0.clone()

    def step():
        loss = info_nce(q, k, neg, **options)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up: caches, lazy imports, the allocator
        for _ in range(3):
            q.grad = k.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    q.grad = k.grad = None
    with torch.cuda.graph(graph):
        loss = step()
    for seed in (1, 2):
        q1, k1, neg1, fresh = arrays(case, seed)
        with torch.no_grad():
            q.copy_(q1)
            k.copy_(k1)
            if neg is not None:
                neg.copy_(neg1)
            if "labels" in options:
                options["labels"].copy_(fresh["labels"])
        graph.replay()
        want, want_q, want_k = eager(q1, k1, neg1, fresh)
        torch.testing.assert_close(loss, want)
        torch.testing.assert_close(q.grad, want_q)
        torch.testing.assert_close(k.grad, want_k)


@pytest.mark.parametrize("case", list(CASES))
def test_compile_reduce_overhead_gives_eagers_numbers(case):
    torch._dynamo.reset()
    _, _, _, options = arrays(case, 0)
    static = {name: value for name, value in options.items() if name != "labels"}

    def loss_fn(q, k, neg, labels):
        return info_nce(q, k, neg, labels=labels, **static)

    compiled = torch.compile(loss_fn, mode="reduce-overhead", fullgraph=True)
    for seed in range(4):  # the first calls record; the later ones replay the graph
        q1, k1, neg1, fresh = arrays(case, seed)
        q, k = (x.clone().requires_grad_() for x in (q1, k1))
        loss = compiled(q, k, neg1, fresh.get("labels"))
        loss.backward()
        want, want_q, want_k = eager(q1, k1, neg1, fresh)
        torch.testing.assert_close(loss.detach(), want)
        torch.testing.assert_close(q.grad, want_q)
        torch.testing.assert_close(k.grad, want_k)
