"""Section ``peers``: each class of ``infonce_xp.peers`` against the peer library's own code, in
time (dense), and sentence-transformers' MultipleNegativesRankingLoss in peak memory (tiled)."""

from __future__ import annotations

from typing import Any

from _worker_peers import CLASSES
from common import Section, case, child, log, mib, size, table, timed, times

MEMORY_CLASS = "st.MultipleNegativesRankingLoss"
PER_MATRIX = 4.0  # the peer's peak in (N, 2N) float32 matrices before one is measured (≈ 4.1)


def run(config: dict[str, Any]) -> Section:
    n, dim = config["peers_size"]
    sizes = {name: tuple(config["peers_size_for"].get(name, (n, dim))) for name in CLASSES}
    others = "".join(
        f" `{name}` runs at N = {m}, D = {d}: its peer holds a matrix of every positive pair "
        "against every negative pair, about 17 N³ bytes at its peak (2 GiB at N = 512, "
        f"1 TiB at N = 4096)."
        for name, (m, d) in sizes.items()
        if (m, d) != (n, dim)
    )
    section = Section(
        "peers",
        "Peers: infonce_xp.peers against the peers' own code",
        f"PyTorch CPU float32 forward+backward (the gradients of every input), N = {n}, "
        f"D = {dim}: each class of `infonce_xp.peers`, called as its peer is, against the peer "
        "library's own loss on the same inputs, the two interleaved in one child process "
        f"(times: medians in ms, interquartile range in brackets).{others} "
        "pytorch-metric-learning's labels are `arange(N) % (N // 2)` (every row has one "
        "positive); sentence-transformers' columns are an anchor, a positive and one hard "
        "negative; open_clip's features are unit rows and its `logit_scale` a 0-D tensor (100) "
        "that receives its gradient. lightly and open_clip need a newer torch than this "
        "environment's: their peers are the ports of their loss code in "
        "`tests/reference_peers.py` (lightly 1.5, open_clip 3.x; line for line where they "
        "compute), which the tests check against. `optax.ntxent` is JAX and is not timed in "
        "this PyTorch section.",
    )
    log(f"peers: interleaved at N={n} D={dim}")
    spec = {"job": "peers_time", "sizes": sizes, "budget_s": config["peers_budget_s"]}
    result = child(spec, config)
    if isinstance(result, str):
        section.add(f"Not measured: {result}")
    else:
        rows = []
        for name, measured in result["rows"].items():
            cells = [f"`{name}`", CLASSES[name], case(*sizes[name])]
            if isinstance(measured, str):
                rows.append([*cells, measured, "-", "-", "-"])
                continue
            ours, peer = measured["ours"], measured["peer"]
            value = ours["median"] / peer["median"]
            rows.append([*cells, timed(ours), timed(peer), times(value), ours["reps"]])
            section.measure(case(*sizes[name]), f"time {name} / peer", value)
        header = ["class", "peer's code", "(N, D)", "ours (ms)", "peer (ms)", "ours / peer"]
        section.add(table([*header, "reps"], rows))
    memory_part(section, config)
    return section


def memory_part(section: Section, config: dict[str, Any]) -> None:
    """Our tiled peak at N against the peer's dense one: measured at N where its estimated
    need fits under the dense limit, else at the largest N / 2^k that fits, scaled by 4^k (its
    peak is (N, 2N) matrices)."""
    n, dim, chunk = config["peers_tiled"]
    limit = config["dense_limit_bytes"]
    base = {"job": "peers_peak", "class": MEMORY_CLASS, "d": dim}
    log(f"peers: tiled {MEMORY_CLASS} N={n}")
    ours = child({**base, "impl": "ours", "n": n, "chunk": chunk}, config)
    at = n
    while at > 1 and PER_MATRIX * 4 * at * 2 * at > limit:
        at //= 2
    log(f"peers: dense peer {MEMORY_CLASS} N={at}")
    peer = child({**base, "impl": "peer", "n": at, "chunk": None}, config)

    def failed(result: Any) -> str | None:
        if isinstance(result, str):
            return result
        return result.get("skipped")

    rows = []
    peer_at_n = None  # the peer's dense peak at N, measured or scaled
    if failed(peer) is None:
        peer_at_n = peer["peak_bytes"] * (n / at) ** 2
        rows.append(["peer, dense", at, mib(peer["peak_bytes"]), timed(peer["time"]), "-"])
        if at < n:
            matrices = peer["peak_bytes"] / (4 * at * 2 * at)
            call = f"peer, dense, scaled: {matrices:.2f} (N, 2N) matrices as at N = {at}"
            rows.append([call, n, f"≈ {mib(peer_at_n)}", "not run", "-"])
    else:
        rows.append(["peer, dense", at, failed(peer), "-", "-"])
    call = f"ours, `chunk_size={chunk}`"
    if failed(ours) is None:
        value = None if not peer_at_n else ours["peak_bytes"] / peer_at_n
        shown = "-" if value is None else f"{value:.2%}"
        rows.append([call, n, mib(ours["peak_bytes"]), timed(ours["time"]), shown])
        if value is not None:
            scaled = f" (peer scaled from N = {at})" if at < n else ""
            section.measure(
                case(n, dim), "tiled peak / peer dense peak", value, f"{value:.2%}{scaled}"
            )
    else:
        rows.append([call, n, failed(ours), "-", "-"])
    section.add(
        f"`st.MultipleNegativesRankingLoss`, one hard-negative column, D = {dim}: our peak "
        f"with `chunk_size={chunk}` at N = {n} against the peer's dense peak, each in a fresh "
        "process (peak resident memory above the inputs, as in the memory section; time: one "
        "call). sentence-transformers scores every anchor against all 2N documents at once, and "
        "its peak is about four (N, 2N) float32 matrices. Where that would exceed "
        f"{size(limit)} (the limit of dense runs, as in the tiled section), the peer runs at "
        "the largest N / 2^k under it and its peak is scaled by (2^k)²: an estimate, shown as "
        "such, against which the goal is then checked.\n\n"
        + table(["call", "N", "peak (MiB)", "time (ms)", "/ peer's dense peak at N"], rows)
    )
