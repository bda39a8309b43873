"""One way to time GPU calls for the decode micro-benchmarks: the calls captured in one CUDA
graph (after a warm-up on a side stream, so lazy initialisation, autotuning and workspace
allocation stay out of it), the median over timed replays, per call. In a graph the calls run
back to back as in the decode step's own graph, with no Python launch between them.

decode_attention_h200.py captures one call several times; decode_gemm_h200.py one call per
weight of a ring larger than the L2 cache, so no call finds its weight there."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch


def us_per_call(calls: Sequence[Callable[[], object]], warm: Sequence[Callable[[], object]],
                warmup_replays: int, timed_replays: int) -> float:
    """Microseconds per call of `calls` captured in one CUDA graph: `warm` runs first on a
    side stream, then `warmup_replays` untimed and `timed_replays` timed replays (median)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in warm:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    for _ in range(warmup_replays):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(timed_replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / len(calls))
    del graph
    return statistics.median(times)
