"""The steps of a generated program's main(), one function each: load, run, report, for both
phases (the RunConfig's `phase`).

A generated program is: init (process group, mesh) -> resolve_checkpoint -> load -> run ->
report, with the process group destroyed in a finally. The plan-specific part is its RunConfig;
everything here only reads it. The phase picks what the one model holds (model.StageModel: a
stage; with decode also the lm_head and the KV cache), the schedule (runtime/pipeline.py: GPipe forwards or decode rounds), the
timing keys (metrics.py) and the reference check (the hidden states against the Hugging Face
model's, or the tokens against its `generate`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from planc.backends.torch import metrics, reference
from planc.backends.torch.reference_check import (
    decode_verdict,
    exit_on_mismatch,
    first_layer_,
    prefill_verdict,
)
from planc.backends.torch.runtime import pipeline
from planc.backends.torch.runtime.cores import attention_kind
from planc.backends.torch.runtime.diagnose import layer_outputs
from planc.backends.torch.runtime.dist import RankContext, barrier
from planc.backends.torch.runtime.inputs import make_inputs
from planc.backends.torch.runtime.layers import Rope, rope_tables
from planc.backends.torch.runtime.load_progress import with_progress
from planc.backends.torch.runtime.model import StageModel, load_stage, weight_bytes
from planc.backends.torch.runtime.ring_attention import lse_backend
from planc.backends.torch.weights import ShardReader

M = TypeVar("M")


@dataclass
class RunResult:
    # per timed repeat, slowest rank, seconds: the forward (prefill), the whole decode (latency)
    times: list[float]
    # the last stage's output: its hidden-state tile (prefill) or tokens [rows, generate] (decode)
    output: Tensor | None
    resident: int | None  # bytes allocated before the first run (CUDA): weights, inputs, cache
    ttfts: list[float] | None = None  # decode: per timed repeat, slowest rank, seconds


def load_with(ctx: RankContext, checkpoint: str, build: Callable[[RankContext, ShardReader], M]
              ) -> M:
    """What `build` makes of this rank's shards; every rank waits, then memory peaks restart."""
    with torch.inference_mode(), closing(ShardReader(checkpoint, ctx.device, ctx.dtype)) as rd:
        model = build(ctx, rd)
    barrier(ctx)
    metrics.reset_peaks(ctx)
    return model


def load(ctx: RankContext, checkpoint: str) -> StageModel:
    """This rank's stage, shards only (decode: with its lm_head and KV cache, and a progress bar
    on rank 0's terminal); memory peaks restart from here."""
    decode = ctx.cfg.phase == "decode"
    return load_with(ctx, checkpoint, with_progress(load_stage) if decode else load_stage)


def rank_prompt(ctx: RankContext) -> Tensor | None:
    """This rank's inputs (its rows and positions; first stage only)."""
    cfg, lay = ctx.cfg, ctx.layout
    if not lay.is_first_stage:
        return None
    return make_inputs(cfg, lay.batch_rows, lay.positions, ctx.device, ctx.dtype)


def rank_inputs(ctx: RankContext) -> tuple[Tensor | None, Rope]:
    """This rank's inputs (first stage only) and the RoPE tables of its positions."""
    cfg = ctx.cfg
    positions = torch.tensor(ctx.layout.positions, device=ctx.device)
    rope = rope_tables(positions, cfg.model.head_dim, cfg.model.features, ctx.dtype)
    return rank_prompt(ctx), rope


def run(ctx: RankContext, model: StageModel) -> RunResult:
    """Warm-up and timed runs of the whole pipeline on this rank's inputs: forwards (prefill) or
    greedy decodes of the whole batch (decode)."""
    if ctx.cfg.phase == "decode":
        return _run_decode(ctx, model)
    inputs, rope = rank_inputs(ctx)
    resident = metrics.allocated(ctx)
    with torch.inference_mode():
        times, out = metrics.time_forward(ctx, lambda: pipeline.forward(ctx, model, inputs, rope))
    return RunResult(times, out, resident)


def _run_decode(ctx: RankContext, model: StageModel) -> RunResult:
    cfg = ctx.cfg
    prompt = rank_prompt(ctx)
    ropes = pipeline.step_ropes(ctx)
    resident = metrics.allocated(ctx)
    ttfts, latencies, tokens = [], [], None
    with torch.inference_mode():
        for i in range(cfg.warmup + cfg.repeats):
            barrier(ctx)
            tokens = None
            ttft, latency, tokens = pipeline.generate(ctx, model, prompt, ropes)
            if i >= cfg.warmup:
                ttfts.append(ttft)
                latencies.append(latency)
    slowest = torch.tensor([ttfts, latencies], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    ttfts, latencies = slowest.tolist()
    return RunResult(latencies, tokens, resident, ttfts)


def locate_first_layer(
    ctx: RankContext, model: StageModel, checkpoint: str, verdict: dict[str, Any] | None
) -> None:
    """When rank 0's verdict says the output differs, every layer's output is gathered and
    compared with Hugging Face's hidden states; the verdict (rank 0) gets the first layer whose
    output differs. Collective: every rank calls it; rank 0 broadcasts whether to look."""
    flag = [verdict is not None and not verdict["ok"]]
    dist.broadcast_object_list(flag, src=0)
    if not flag[0]:
        return
    inputs, rope = rank_inputs(ctx)
    outs = layer_outputs(ctx, model, inputs, rope)
    if verdict is not None:
        states = reference.reference_output(ctx.cfg, checkpoint, ctx.device, all_layers=True)
        first_layer_(verdict, outs, states, ctx.cfg.dtype)


def report(
    ctx: RankContext,
    model: StageModel,
    result: RunResult,
    checkpoint: str,
    out_path: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Collect every rank's numbers, check rank 0's gathered output (hidden states or tokens)
    against the reference, write the JSON (rank 0); rank 0 exits with status 1 when the output
    differs from the reference (reference_check)."""
    cfg = ctx.cfg
    mine = metrics.memory_stats(ctx, weight_bytes(model), result.resident)  # before the reference
    if cfg.phase == "decode":
        mine["kv_cache_bytes"] = model.cache_bytes()
        mine["graph_pool_bytes"] = model.graph_pool_bytes()
        extra = {**model.step_kind(ctx), **(extra or {})}
    ranks: list[Any] = [None] * cfg.world_size
    dist.all_gather_object(ranks, mine)
    if cfg.phase == "decode":
        timing, errors, info = _check_decode(ctx, result, checkpoint)
    else:
        timing, errors, info = _check_prefill(ctx, model, result, checkpoint)
    data = None
    if ctx.rank == 0:
        data = metrics.summary(ctx, timing, ranks, errors, {**info, **(extra or {})})
        metrics.write_metrics(out_path, data)
    barrier(ctx)  # the JSON exists before any rank exits
    exit_on_mismatch(data)  # rank 0: status 1 when the output differs from the reference
    return data


Checked = tuple[dict[str, Any], tuple[float, float] | None, dict[str, Any]]


def _check_prefill(ctx: RankContext, model: StageModel, result: RunResult, checkpoint: str
                   ) -> Checked:
    """A prefill's timing keys, its error against the reference and what rank 0 reports of it
    (the attention kernel, the verdict). Collective: every rank calls it."""
    cfg = ctx.cfg
    info: dict[str, Any] = {"sdpa_backend": None}
    kind = attention_kind(ctx)
    if kind == "heads":
        lay = ctx.layout
        info["sdpa_backend"] = metrics.sdpa_backend(ctx, len(lay.q_heads), len(lay.kv_heads))
    elif kind == "ring":  # the kernel of each ring block's (out, log-sum-exp)
        probe = torch.empty((1, 1, 1, cfg.model.head_dim), device=ctx.device, dtype=ctx.dtype)
        info["ring_block_kernel"] = lse_backend(probe)
    errors = None
    if cfg.check_reference:
        with torch.inference_mode():
            full = pipeline.gather_output(ctx, result.output)
            if full is not None:
                ref = reference.reference_output(cfg, checkpoint, ctx.device)
                errors = reference.max_errors(full, ref)
                info["reference"] = prefill_verdict(full, ref, cfg.dtype)
                del ref
                if reference.is_compressed(cfg):
                    # How far the compressed model we ran is from the model it compresses.
                    plain = reference.reference_output(
                        cfg, checkpoint, ctx.device, compressed=False
                    )
                    info["compressed_vs_uncompressed_rel_error"] = reference.max_errors(
                        full, plain
                    )[1]
        locate_first_layer(ctx, model, checkpoint, info.get("reference"))
    return metrics.prefill_times(cfg.batch, cfg.seq, result.times), errors, info


def _check_decode(ctx: RankContext, result: RunResult, checkpoint: str) -> Checked:
    """A decode's timing keys and what rank 0 reports of it: every generated token and the
    verdict against Hugging Face generate. Collective: every rank calls it."""
    cfg = ctx.cfg
    with torch.inference_mode():
        full = pipeline.gather_tokens(ctx, result.output)
    info: dict[str, Any] = {}
    if full is not None:  # rank 0
        info = {
            "batch": cfg.batch,
            "context": cfg.context,
            "generate": cfg.generate,
            "generated": full.tolist(),
            "matches_reference": None,
        }
        if cfg.check_reference:
            ref = reference.reference_generate(cfg, checkpoint, ctx.device)
            info["reference"] = decode_verdict(full, ref, cfg.context)
            info["matches_reference"] = info["reference"]["ok"]
            if not info["matches_reference"]:
                info["reference_generated"] = ref.tolist()
    assert result.ttfts is not None
    timing = metrics.decode_times(cfg.batch, cfg.generate, result.ttfts, result.times)
    return timing, None, info
