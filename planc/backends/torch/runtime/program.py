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
from planc.backends.torch.runtime import pipeline
from planc.backends.torch.runtime.cores import attention_kind
from planc.backends.torch.runtime.dist import RankContext, barrier
from planc.backends.torch.runtime.inputs import make_inputs
from planc.backends.torch.runtime.layers import rope_tables
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


def run(ctx: RankContext, model: StageModel) -> RunResult:
    """Warm-up and timed forwards of the whole pipeline on this rank's inputs."""
    cfg, lay = ctx.cfg, ctx.layout
    inputs = None
    if lay.is_first_stage:
        inputs = make_inputs(cfg, lay.batch_rows, lay.positions, ctx.device, ctx.dtype)
    positions = torch.tensor(lay.positions, device=ctx.device)
    rope = rope_tables(positions, cfg.model.head_dim, cfg.model.rope_theta, ctx.dtype)
    resident = metrics.allocated(ctx)
    with torch.inference_mode():
        times, out = metrics.time_forward(ctx, lambda: pipeline.forward(ctx, model, inputs, rope))
    return RunResult(times, out, resident)


def report(
    ctx: RankContext,
    model: StageModel,
    result: RunResult,
    checkpoint: str,
    out_path: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Collect every rank's numbers, check rank 0's gathered output, write the JSON (rank 0)."""
    cfg = ctx.cfg
    mine = metrics.memory_stats(ctx, weight_bytes(model), result.resident)  # before the reference
    ranks: list[Any] = [None] * cfg.world_size
    dist.all_gather_object(ranks, mine)
    info: dict[str, Any] = {
        "mesh": [list(a) for a in cfg.mesh],
        "microbatches": cfg.microbatches,
        "sdpa_backend": None,
        **(extra or {}),
    }
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
                del ref
                if reference.is_compressed(cfg):
                    # How far the compressed model we ran is from the model it compresses.
                    plain = reference.reference_output(
                        cfg, checkpoint, ctx.device, compressed=False
                    )
                    info["compressed_vs_uncompressed_rel_error"] = reference.max_errors(
                        full, plain
                    )[1]
    data = None
    if ctx.rank == 0:
        data = metrics.summary(ctx, result.times, ranks, errors, info)
        metrics.write_metrics(out_path, data)
    barrier(ctx)  # the JSON exists before any rank exits
    return data
