"""Worker of ``test_peers_distributed.py``: WORLD gloo processes compare each distributed peer
class with the peer's own code on the same ranks, each rank with different data.

Not a test module. Run in a subprocess, so that a hung collective is killed by the test's
timeout::

    python _peers_gloo_worker.py WORLD PORT DIR

Each rank writes ``DIR/peers-rankR.json``: per case, the largest difference of the loss and of
each input's gradient between ours and the peer's, or the error.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np


def cases() -> dict[str, tuple[Any, Any, int]]:
    """Name: (ours, the peer, how many (N, D) inputs)."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from infonce_xp.peers import lightly, open_clip
    from infonce_xp.peers import sentence_transformers as st
    from reference_peers import lightly_dcl, lightly_ntxent_gathered, open_clip_loss

    def mnrl(**kwargs: Any) -> tuple[Any, Any]:
        ours = st.MultipleNegativesRankingLoss(10.0, gather_across_devices=True, **kwargs)
        peer = MultipleNegativesRankingLoss(
            torch.nn.Module(), 10.0, gather_across_devices=True, **kwargs
        )
        return ours, lambda *e: peer.compute_loss_from_embeddings(list(e), None)

    gist = st.GISTEmbedLoss(0.05, margin=0.1, contrast_anchors=False, gather_across_devices=True)
    out: dict[str, tuple[Any, Any, int]] = {
        "st.MNRL": (*mnrl(), 3),
        "st.MNRL(symmetric)": (
            *mnrl(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"),
            3,
        ),
        "st.MNRL(GTE, hardness)": (
            *mnrl(
                directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"),
                hardness_mode="in_batch_negatives",
                hardness_strength=2.0,
            ),
            4,
        ),
        "lightly.NTXentLoss": (
            lightly.NTXentLoss(0.3, gather_distributed=True),
            lambda a, b: lightly_ntxent_gathered(a, b, 0.3),
            2,
        ),
        "lightly.DCLWLoss": (
            lightly.DCLWLoss(0.2, 0.7, gather_distributed=True),
            lambda a, b: lightly_dcl(a, b, 0.2, 0.7, gathered=True),
            2,
        ),
        "st.GISTEmbedLoss": (
            lambda a, p: gist((a, p), (a.detach(), p.detach())),
            _st_gist(),
            2,
        ),
    }
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    for local, with_grad in ((True, True), (True, False), (False, True), (False, False)):
        ours = open_clip.ClipLoss(local, with_grad, rank, world)
        out[f"open_clip.ClipLoss({local}, {with_grad})"] = (
            lambda i, t, ours=ours: ours(i, t, 7.0),
            lambda i, t, local=local, with_grad=with_grad: open_clip_loss(
                i, t, 7.0, local, with_grad
            ),
            2,
        )
    out |= _siglip_cases(rank, world)
    return out


SIGLIP_IMPLS = ("bidir", "shift", "reduce", "gather")


def _siglip_cases(rank: int, world: int) -> dict[str, tuple[Any, Any, int]]:
    """open_clip's SigLipLoss for each dist_impl (its loss.py loaded alone), against our peer
    class of the same dist_impl, and against sigmoid_loss with each exchange, tiled or not."""
    from infonce_xp import sigmoid_loss
    from infonce_xp.peers import open_clip
    from infonce_xp.torch import AllGather, all_gather
    from reference_sigmoid import open_clip_loss_module

    module = open_clip_loss_module()
    if module is None:
        return {}
    out: dict[str, tuple[Any, Any, int]] = {}
    for impl in SIGLIP_IMPLS:
        peer = module.SigLipLoss(rank=rank, world_size=world, dist_impl=impl)
        ours = open_clip.SigLipLoss(rank=rank, world_size=world, dist_impl=impl)
        out[f"open_clip.SigLipLoss({impl})"] = (
            lambda i, t, ours=ours: ours(i, t, 7.0, -3.0),
            lambda i, t, peer=peer: peer(i, t, 7.0, -3.0),
            2,
        )
        for exchange in ("gather", "ring"):
            for chunk in (None, 2):
                out[f"sigmoid_loss({exchange}, {chunk}) = SigLipLoss({impl})"] = (
                    lambda i, t, exchange=exchange, chunk=chunk: sigmoid_loss(
                        i,
                        t,
                        1 / 7.0,
                        -3.0,
                        normalize=False,
                        gather=all_gather,
                        exchange=exchange,
                        chunk_size=chunk,
                    ),
                    lambda i, t, peer=peer: peer(i, t, 7.0, -3.0),
                    2,
                )

    class RingOnly(AllGather):  # the ring must pass the keys round, never gather them all
        def __call__(self, tensor: Any) -> Any:
            raise AssertionError("exchange='ring' gathered every worker's keys")

    out["sigmoid_loss(ring) never gathers"] = (
        lambda i, t: sigmoid_loss(i, t, 0.2, -1.0, gather=RingOnly(), exchange="ring"),
        lambda i, t: sigmoid_loss(i, t, 0.2, -1.0, gather=all_gather),
        2,
    )
    return out


def _st_gist() -> Any:
    """sentence-transformers' own GISTEmbedLoss.forward with gather_across_devices=True, its
    models stood in for by given embeddings (the guide: the embeddings themselves)."""
    import torch
    from sentence_transformers.sentence_transformer.losses import gist_embed

    def loss(*embeddings: Any) -> Any:
        peer = gist_embed.GISTEmbedLoss.__new__(gist_embed.GISTEmbedLoss)
        torch.nn.Module.__init__(peer)
        peer.model = peer.guide = None
        peer.must_retokenize, peer.gather_across_devices = False, True
        peer.temperature, peer.margin_strategy, peer.margin = 0.05, "absolute", 0.1
        peer.contrast_anchors, peer.contrast_positives = False, True
        peer.similarity_fct = torch.nn.CosineSimilarity(dim=-1)
        peer.cross_entropy_loss = torch.nn.CrossEntropyLoss()
        columns = iter([list(embeddings), [e.detach() for e in embeddings]])
        gist_embed.embed_columns = lambda model, features: next(columns)
        return peer.forward([{}] * len(embeddings), None)

    return loss


def compare(ours: Any, peer: Any, arrays: list[np.ndarray]) -> dict[str, float]:
    import torch

    results = []
    for fn in (ours, peer):
        leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
        loss = fn(*leaves)
        loss.backward()
        results.append((loss.detach().numpy(), [leaf.grad.numpy() for leaf in leaves]))
    (got, got_grads), (want, want_grads) = results
    out = {"loss": float(np.abs(got - want).max()), "value": float(want)}
    for i, (a, b) in enumerate(zip(got_grads, want_grads)):
        out[f"input {i}"] = float(np.abs(a - b).max())
    return out


def worker(rank: int, world: int, port: int, directory: Path) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        rng = np.random.default_rng(100 + rank)  # every rank its own data
        report: dict[str, Any] = {}
        for name, (ours, peer, inputs) in cases().items():
            arrays = list(rng.normal(size=(inputs, 5, 6)))
            try:  # a failure is the same on every rank, so the ranks stay in step
                report[name] = compare(ours, peer, arrays)
            except Exception:
                report[name] = {"error": traceback.format_exc(limit=-4)}
        (directory / f"peers-rank{rank}.json").write_text(json.dumps(report))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's finalization: gloo's threads, torn down there, now and
    # then abort a process ("terminate called without an active exception") after every
    # result is written and the group destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(world: int, port: int, directory: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(world, port, directory), nprocs=world, join=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
