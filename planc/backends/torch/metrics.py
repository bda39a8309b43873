"""Measurements of one run, either phase: times, memory per rank, and the metrics JSON rank 0
writes. Every metrics JSON has the same run keys (`run_keys`); the timing keys are the phase's:
`prefill_times` or `decode_times`.

Prefill time: `warmup` untimed forwards, then `repeats` timed ones, each started after a barrier. A
repeat's time is its slowest rank's (all_reduce MAX: a pipeline finishes when its last stage
does), the reported time the median over repeats. CUDA events on GPU, perf_counter on CPU.
Memory (CUDA only): peaks are reset after the weights are loaded, so a peak is the weights plus
what one forward allocates; the previous forward's output is dropped before the next starts.
Peaks also hold what CUDA libraries take through PyTorch's allocator on first use: the cuBLAS
workspace (32 MiB per device on H200 with torch 2.11) stays allocated once the first GEMM ran.

Decode times, MLPerf inference style, for one run of a batch of B sequences generating G tokens:
  TTFT (time to first token): from the start to the first token of every sequence, i.e. the
       prefill of the prompt (all microbatches) and its argmax on the last stage;
  latency: from the start to the last token;
  TPOT (time per output token): (latency - TTFT) / (G - 1), the mean time of one decode step
       after the first token (undefined, None, when G == 1);
  output tokens/s: B * G / latency.
Each is the slowest rank's time (a pipeline has its tokens when its last stage does), median
over the timed repeats (TTFT and latency separately; TPOT from the two medians).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from planc.backends.torch import memory_trace
from planc.backends.torch.runtime.dist import RankContext, barrier

T = TypeVar("T")


def reset_peaks(ctx: RankContext) -> None:
    """Restart the memory peaks (and, with PLANC_MEMORY_TRACE, begin recording allocations)."""
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
        memory_trace.start(ctx.device, ctx.rank)


def time_forward(ctx: RankContext, fn: Callable[[], T]) -> tuple[list[float], T | None]:
    """Per-repeat times in seconds (slowest rank of each repeat) and the last output."""
    out: T | None = None
    for _ in range(ctx.cfg.warmup):
        barrier(ctx)
        out = None
        out = fn()
    times = []
    for _ in range(ctx.cfg.repeats):
        barrier(ctx)
        out = None
        if ctx.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    slowest = torch.tensor(times, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return slowest.tolist(), out


def allocated(ctx: RankContext) -> int | None:
    return torch.cuda.memory_allocated(ctx.device) if ctx.device.type == "cuda" else None


def memory_stats(ctx: RankContext, weight_bytes: int, resident: int | None) -> dict[str, Any]:
    """This rank's memory: peaks since the weights were loaded, the bytes of its weights, and
    what was allocated just before the first forward (weights, inputs, RoPE tables)."""
    cfg = ctx.cfg
    stats: dict[str, Any] = {
        "rank": ctx.rank,
        "peak_allocated": None,
        "peak_reserved": None,
        "weight_bytes": weight_bytes,
        "resident_before_forward": resident,
        "predicted_peak": cfg.predicted_peak[ctx.rank] if cfg.predicted_peak else None,
    }
    if ctx.device.type == "cuda":
        stats["peak_allocated"] = torch.cuda.max_memory_allocated(ctx.device)
        stats["peak_reserved"] = torch.cuda.max_memory_reserved(ctx.device)
        trace = memory_trace.finish(stats["peak_allocated"])
        if trace is not None:
            stats["memory_trace"] = trace
    return stats


def sdpa_backend(ctx: RankContext, heads: int, kv_heads: int) -> str | None:
    """Which SDPA kernel torch picks for this rank's attention shapes (None if unknown)."""
    d, s = ctx.cfg.model.head_dim, min(ctx.cfg.seq, 256)
    q = torch.empty((1, heads, s, d), device=ctx.device, dtype=ctx.dtype)
    k = torch.empty((1, kv_heads, s, d), device=ctx.device, dtype=ctx.dtype)
    try:
        choice = torch._fused_sdp_choice(  # type: ignore[attr-defined]
            q, k, k, None, 0.0, ctx.cfg.causal, scale=d**-0.5, enable_gqa=heads != kv_heads
        )
        return torch.nn.attention.SDPBackend(choice).name
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None


def run_keys(ctx: RankContext) -> dict[str, Any]:
    """What every metrics JSON of a run says about it, whatever its phase."""
    cfg = ctx.cfg
    return {
        "phase": cfg.phase,
        "mesh": [list(a) for a in cfg.mesh],
        "microbatches": cfg.microbatches,
        "world_size": cfg.world_size,
        "device": ctx.device.type,
        "dtype": cfg.dtype,
        "torch_version": torch.__version__,
    }


def prefill_times(batch: int, seq: int, times_s: list[float]) -> dict[str, Any]:
    """The metrics JSON's timing keys of a prefill from per-repeat times (seconds)."""
    t = statistics.median(times_s)
    return {"tokens_per_s": batch * seq / t, "time_s": t, "times_s": list(times_s)}


def tpot_s(latency_s: float, ttft_s: float, generated: int) -> float | None:
    """MLPerf's time per output token: the time after the first token over the tokens after it."""
    if generated < 2:
        return None
    return (latency_s - ttft_s) / (generated - 1)


def output_tokens_per_s(batch: int, generated: int, latency_s: float) -> float:
    return batch * generated / latency_s


def decode_times(
    batch: int, generated: int, ttfts_s: list[float], latencies_s: list[float]
) -> dict[str, Any]:
    """The metrics JSON's timing keys of a decode from per-repeat TTFTs and latencies (seconds)."""
    ttft = statistics.median(ttfts_s)
    latency = statistics.median(latencies_s)
    tpot = tpot_s(latency, ttft, generated)
    rate = output_tokens_per_s(batch, generated, latency)
    return {
        "ttft_ms": ttft * 1e3,
        "tpot_ms": None if tpot is None else tpot * 1e3,
        "latency_ms": latency * 1e3,
        "output_tokens_per_s": rate,
        "tokens_per_s": rate,  # what `planc run`'s text summary prints
        "time_s": latency,
        "times_s": list(latencies_s),
        "ttfts_s": list(ttfts_s),
    }


def summary(
    ctx: RankContext,
    timing: dict[str, Any],
    ranks: list[dict[str, Any]],
    errors: tuple[float, float] | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Rank 0's metrics JSON: the run keys, the phase's timing keys (prefill_times or
    decode_times), every rank's memory, the error against the reference, and `extra`."""
    return {
        **run_keys(ctx),
        **timing,
        "ranks": ranks,
        "max_abs_error": errors[0] if errors else None,
        "max_rel_error": errors[1] if errors else None,
        **extra,
    }


def write_metrics(path: str | Path, data: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(p)  # readers never see half a file
