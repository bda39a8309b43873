"""The steps of a generated program's main(), one function each: load, run, report.

A generated program is: init (process group, mesh) -> resolve_checkpoint -> load -> run ->
report, with the process group destroyed in a finally. The plan-specific part is its RunConfig;
everything here only reads it.
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
from planc.backends.torch.reference_check import exit_on_mismatch, first_layer_, prefill_verdict
from planc.backends.torch.runtime import pipeline
from planc.backends.torch.runtime.cores import attention_kind
from planc.backends.torch.runtime.diagnose import layer_outputs
from planc.backends.torch.runtime.dist import RankContext, barrier
from planc.backends.torch.runtime.inputs import make_inputs
from planc.backends.torch.runtime.layers import Rope, rope_tables
from planc.backends.torch.runtime.model import StageModel, load_stage, weight_bytes
from planc.backends.torch.runtime.ring_attention import lse_backend
from planc.backends.torch.weights import ShardReader

M = TypeVar("M")


@dataclass
class RunResult:
    times: list[float]  # per timed repeat, slowest rank, seconds
    output: Tensor | None  # this rank's output tile (last stage only)
    resident: int | None  # bytes allocated before the first forward (CUDA): weights + inputs


def load_with(ctx: RankContext, checkpoint: str, build: Callable[[RankContext, ShardReader], M]
              ) -> M:
    """What `build` makes of this rank's shards; every rank waits, then memory peaks restart."""
    with torch.inference_mode(), closing(ShardReader(checkpoint, ctx.device, ctx.dtype)) as rd:
        model = build(ctx, rd)
    barrier(ctx)
    metrics.reset_peaks(ctx)
    return model


def load(ctx: RankContext, checkpoint: str) -> StageModel:
    """This rank's stage, shards only; memory peaks restart from here."""
    return load_with(ctx, checkpoint, load_stage)


def rank_inputs(ctx: RankContext) -> tuple[Tensor | None, Rope]:
    """This rank's inputs (first stage only) and the RoPE tables of its positions."""
    cfg, lay = ctx.cfg, ctx.layout
    inputs = None
    if lay.is_first_stage:
        inputs = make_inputs(cfg, lay.batch_rows, lay.positions, ctx.device, ctx.dtype)
    positions = torch.tensor(lay.positions, device=ctx.device)
    return inputs, rope_tables(positions, cfg.model.head_dim, cfg.model.features, ctx.dtype)


def run(ctx: RankContext, model: StageModel) -> RunResult:
    """Warm-up and timed forwards of the whole pipeline on this rank's inputs."""
    inputs, rope = rank_inputs(ctx)
    resident = metrics.allocated(ctx)
    with torch.inference_mode():
        times, out = metrics.time_forward(ctx, lambda: pipeline.forward(ctx, model, inputs, rope))
    return RunResult(times, out, resident)


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
    """Collect every rank's numbers, check rank 0's gathered output, write the JSON (rank 0);
    rank 0 exits with status 1 when the output differs from the reference (reference_check)."""
    cfg = ctx.cfg
    mine = metrics.memory_stats(ctx, weight_bytes(model), result.resident)  # before the reference
    ranks: list[Any] = [None] * cfg.world_size
    dist.all_gather_object(ranks, mine)
    info: dict[str, Any] = {"sdpa_backend": None, **(extra or {})}
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
    data = None
    if ctx.rank == 0:
        timing = metrics.prefill_times(cfg.batch, cfg.seq, result.times)
        data = metrics.summary(ctx, timing, ranks, errors, info)
        metrics.write_metrics(out_path, data)
    barrier(ctx)  # the JSON exists before any rank exits
    exit_on_mismatch(data)  # rank 0: status 1 when the output differs from the reference
    return data
