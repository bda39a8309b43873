"""The steps of a generated decode program's main() (phase decode): load, run, report, as
program.py's for prefill; emit.py imports this module as `program` when cfg.phase is decode.

Schedule. Items are (step t, microbatch m), numbered i = t * microbatches + m. Step 0 is the
prefill of the prompt, later steps one token per sequence. The schedule goes in rounds
(planc/layout/schedule.py): in each round every stage runs at most one item, then
exchanges with its neighbours in one batch_isend_irecv: it sends the item's hidden state to the
next stage (the last stage: the argmax token ids [rows] back to the first stage, its peer with
the same tensor / data / sequence coordinates) and receives what its previous stage (the first
stage: the last stage) ran in the same round. Both ends of every message are in the same
round's batch and every rank walks the rounds in order, on one process group. That is what NCCL
needs: a group's point-to-point ops run on one stream per rank, so an earlier schedule that let
each stage post receives ahead and keep sends in flight, with the tokens on a second group,
passed on gloo and deadlocked on NCCL (the stream waits of the sends and receives formed a
cycle across the two ranks). With m >= p microbatches the stages stay busy: the first stage runs
item i in round i and stage k in round i + k, so the token of item i is back in time for item
i + m; with m < p each step pays the pipeline's fill (p - m rounds idle per step). Without
pipeline stages the argmax output is fed straight back.

Timing: each run starts after a barrier; TTFT is when a rank finished its step-0 items, latency
when it finished all of them; both the slowest rank's (all_reduce MAX), so TTFT is the last
stage's first tokens. Metrics: metrics.decode_times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from planc.backends.torch import metrics, reference
from planc.backends.torch.reference_check import decode_verdict, exit_on_mismatch
from planc.backends.torch.runtime.decode_model import DecodeModel, load_decode
from planc.backends.torch.runtime.dist import RankContext, barrier
from planc.backends.torch.runtime.inputs import make_inputs
from planc.backends.torch.runtime.layers import Rope, rope_tables
from planc.backends.torch.runtime.layout import token_holders
from planc.backends.torch.runtime.load_progress import with_progress
from planc.backends.torch.runtime.model import weight_bytes
from planc.backends.torch.runtime.program import load_with
from planc.layout.schedule import stage_rounds, step_slots

if TYPE_CHECKING:
    from planc.backends.torch.runtime.textgen import TextBatch


@dataclass
class DecodeResult:
    ttfts: list[float]  # per timed repeat, slowest rank, seconds
    latencies: list[float]
    tokens: Tensor | None  # [local rows, generate] int64 on the last stage, last repeat
    resident: int | None  # bytes allocated before the first run (CUDA): weights, cache, inputs


def load(ctx: RankContext, checkpoint: str) -> DecodeModel:
    """This rank's stage, lm_head and KV cache (a progress bar on rank 0's terminal); memory
    peaks restart from here."""
    return load_with(ctx, checkpoint, with_progress(load_decode))


def _now(ctx: RankContext) -> float:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return time.perf_counter()


def generate(
    ctx: RankContext,
    model: DecodeModel,
    prompt: Tensor | None,
    ropes: list[Rope],
    text: TextBatch | None = None,
) -> tuple[float, float, Tensor | None]:
    """One decode of this rank's rows: (seconds to its step-0 end, to its end, tokens). Greedy
    over equal-length prompts, or with `text` real prompts (right-padded to the context): its
    per-row positions, cache mask, token choice and stop (runtime/textgen.py)."""
    cfg, lay = ctx.cfg, ctx.layout
    nmb, r = cfg.microbatches, lay.micro_rows
    steps = cfg.generate if text is None else text.steps
    sp, part = lay.parts("seq"), lay.part("seq")
    slots = [step_slots(cfg.context, lay.positions, sp, part, t) for t in range(steps)]
    p, k = lay.n_stages, lay.stage
    prev = lay.stage_peer(-1) if k > 0 else None
    nxt = lay.stage_peer(+1) if k < p - 1 else None
    back_to = lay.stage_peer(1 - p) if k == p - 1 > 0 else None
    back_from = lay.stage_peer(p - 1) if k == 0 < p - 1 else None

    tokens = None
    if lay.is_last_stage:
        tokens = torch.zeros((len(lay.batch_rows), cfg.generate), device=ctx.device,
                             dtype=torch.long)  # fmt: skip
    inbox: dict[int, Tensor] = {}  # item -> its received input (hidden state or token ids)
    exchange: tuple[list[dist.P2POp], list[dist.Work]] = ([], [])
    ttft = 0.0
    start = _now(ctx)
    for rnd in stage_rounds(nmb, steps, p, k):
        for w in exchange[1]:  # the last round's inputs are here and its sends are done
            w.wait()
        ops: list[dist.P2POp] = []
        if rnd.run is not None:
            t, m = divmod(rnd.run, nmb)
            rows = slice(m * r, (m + 1) * r)
            if k > 0:
                x = inbox.pop(rnd.run)
            elif t == 0:
                assert prompt is not None
                x = prompt[rows]
            elif p > 1:
                x = inbox.pop(rnd.run).view(r, 1)  # token ids sent back by the last stage
            else:  # one stage: the tokens it just chose
                assert tokens is not None
                x = tokens[rows, t - 1 : t]
            if text is None or t == 0:
                y = model(x, ropes[t], rows, slots[t], t == 0)
            else:
                y = model(x, text.rope(rows, t), rows, slots[t], False, text.mask(rows, slots[t]))
            del x
            if nxt is None:
                assert tokens is not None
                if text is None:
                    y = tokens[rows, t] = model.next_tokens(y, t == 0)
                else:
                    y = tokens[rows, t] = text.next_tokens(model, y, rows, t)
            if rnd.send:
                ops.append(dist.P2POp(dist.isend, y, nxt if nxt is not None else back_to))
            del y
            if t == 0 and m == nmb - 1:
                ttft = _now(ctx) - start
            if text is not None and p == 1 and m == nmb - 1 and text.all_stopped():
                break  # every rank runs every item when there is one stage: all agree
        if rnd.recv is not None:
            if k > 0:
                n = len(slots[rnd.recv // nmb].positions)
                buf = torch.empty((r, n, cfg.model.hidden), device=ctx.device, dtype=ctx.dtype)
            else:
                buf = torch.empty(r, device=ctx.device, dtype=torch.long)
            inbox[rnd.recv] = buf
            ops.append(dist.P2POp(dist.irecv, buf, prev if k > 0 else back_from))
        # Both ends of every message put it in the same round's batch, and every rank walks the
        # rounds in order: one process group, no ordering between channels to get wrong (NCCL
        # runs a group's point-to-point ops on one stream; see the module docstring).
        exchange = (ops, dist.batch_isend_irecv(ops) if ops else [])
    for w in exchange[1]:
        w.wait()
    return ttft, _now(ctx) - start, tokens


def step_ropes(ctx: RankContext) -> list[Rope]:
    """RoPE tables of each step: the rank's prompt positions, then position context + t - 1."""
    cfg, m = ctx.cfg, ctx.cfg.model
    prompt = rope_tables(torch.tensor(ctx.layout.positions, device=ctx.device), m.head_dim,
                         m.features, ctx.dtype)  # fmt: skip
    new = torch.arange(cfg.context, cfg.context + cfg.generate - 1, device=ctx.device)
    tab = rope_tables(new, m.head_dim, m.features, ctx.dtype)
    return [prompt] + [Rope(tab.cos[i : i + 1], tab.sin[i : i + 1]) for i in range(len(new))]


def rope_at(ctx: RankContext, positions: Tensor) -> Rope:
    """RoPE of one new token per row at `positions` [r]: tables [r, 1, 1, head_dim // 2]."""
    m = ctx.cfg.model
    tab = rope_tables(positions, m.head_dim, m.features, ctx.dtype)
    return Rope(tab.cos[:, None], tab.sin[:, None])


def run(ctx: RankContext, model: DecodeModel) -> DecodeResult:
    """Warm-up and timed greedy decodes of the whole batch."""
    cfg, lay = ctx.cfg, ctx.layout
    prompt = None
    if lay.is_first_stage:
        prompt = make_inputs(cfg, lay.batch_rows, lay.positions, ctx.device, ctx.dtype)
    ropes = step_ropes(ctx)
    resident = metrics.allocated(ctx)
    ttfts, latencies, tokens = [], [], None
    with torch.inference_mode():
        for i in range(cfg.warmup + cfg.repeats):
            barrier(ctx)
            tokens = None
            ttft, latency, tokens = generate(ctx, model, prompt, ropes)
            if i >= cfg.warmup:
                ttfts.append(ttft)
                latencies.append(latency)
    slowest = torch.tensor([ttfts, latencies], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    ttfts, latencies = slowest.tolist()
    return DecodeResult(ttfts, latencies, tokens, resident)


def gather_tokens(ctx: RankContext, tokens: Tensor | None) -> Tensor | None:
    """All generated tokens [batch, generate] on rank 0 (None elsewhere), point-to-point."""
    cfg = ctx.cfg
    holders = token_holders(cfg)
    if ctx.rank != 0:
        if any(rank == ctx.rank for rank, _ in holders):
            assert tokens is not None
            dist.send(tokens.contiguous(), dst=0)
        return None
    full = torch.empty((cfg.batch, cfg.generate), device=ctx.device, dtype=torch.long)
    for rank, rows in holders:
        if rank == 0:
            assert tokens is not None
            full[rows.start : rows.stop] = tokens
        else:
            tile = torch.empty((len(rows), cfg.generate), device=ctx.device, dtype=torch.long)
            dist.recv(tile, src=rank)
            full[rows.start : rows.stop] = tile
    return full


def report(
    ctx: RankContext,
    model: DecodeModel,
    result: DecodeResult,
    checkpoint: str,
    out_path: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Collect every rank's numbers and tokens, compare rank 0's with Hugging Face generate,
    write the JSON (rank 0); rank 0 exits with status 1 when a token differs."""
    cfg = ctx.cfg
    mine = metrics.memory_stats(ctx, weight_bytes(model), result.resident)
    mine["kv_cache_bytes"] = model.cache_bytes()
    ranks: list[Any] = [None] * cfg.world_size
    dist.all_gather_object(ranks, mine)
    with torch.inference_mode():
        full = gather_tokens(ctx, result.tokens)
    data = None
    if ctx.rank == 0:
        assert full is not None
        timing = metrics.decode_times(cfg.batch, cfg.generate, result.ttfts, result.latencies)
        data = metrics.summary(ctx, timing, ranks, None, {
            "batch": cfg.batch,
            "context": cfg.context,
            "generate": cfg.generate,
            "generated": full.tolist(),
            "matches_reference": None,
            **(extra or {}),
        })  # fmt: skip
        if cfg.check_reference:
            ref = reference.reference_generate(cfg, checkpoint, ctx.device)
            data["reference"] = decode_verdict(full, ref, cfg.context)
            data["matches_reference"] = data["reference"]["ok"]
            if not data["matches_reference"]:
                data["reference_generated"] = ref.tolist()
        metrics.write_metrics(out_path, data)
    barrier(ctx)  # the JSON exists before any rank exits
    exit_on_mismatch(data)  # rank 0: status 1 when a token differs from the reference
    return data
