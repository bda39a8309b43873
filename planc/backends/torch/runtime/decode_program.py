"""The steps of a generated decode program's main() (phase decode): load, run, report, as
program.py's for prefill; emit.py imports this module as `program` when cfg.phase is decode.

Schedule. Every rank walks the same items (step t, microbatch m) in the order t-major:
(0, 0), (0, 1), ..., (1, 0), ... Step 0 is the prefill of the prompt, later steps one token per
sequence (decode_layout). The first stage embeds the prompt (t = 0) or the tokens of (t - 1, m)
that the last stage sent back; a middle stage receives the hidden state from the previous stage;
the last stage takes the argmax of its logits and sends the token ids [rows] to the first stage
(its peer with the same tensor / data / sequence coordinates), point-to-point on a process group
of its own (decode_model.DecodeModel.token_group), so each channel carries its messages in item
order on both ends. Each stage posts the receive of its next item before computing the current
one and keeps at most two sends in flight. With p stages and m >= p microbatches the stages stay busy: while the last stage
finishes (t, j) the first is already on (t + 1, i) for the i < j whose tokens came back; with
m < p each step pays the pipeline's fill (p - m stage times idle per step). Without pipeline
stages the argmax output is fed straight back.

Timing: each run starts after a barrier; TTFT is when a rank finished its step-0 items, latency
when it finished all of them; both the slowest rank's (all_reduce MAX), so TTFT is the last
stage's first tokens. Metrics: decode_metrics.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from planc.backends.torch import decode_metrics, metrics
from planc.backends.torch.runtime.decode_layout import step_slots, token_holders
from planc.backends.torch.runtime.decode_model import DecodeModel, load_decode
from planc.backends.torch.runtime.dist import RankContext, barrier
from planc.backends.torch.runtime.inputs import make_inputs
from planc.backends.torch.runtime.layers import Rope, rope_tables
from planc.backends.torch.runtime.model import weight_bytes
from planc.backends.torch.weights import ShardReader


@dataclass
class DecodeResult:
    ttfts: list[float]  # per timed repeat, slowest rank, seconds
    latencies: list[float]
    tokens: Tensor | None  # [local rows, generate] int64 on the last stage, last repeat
    resident: int | None  # bytes allocated before the first run (CUDA): weights, cache, inputs


def load(ctx: RankContext, checkpoint: str) -> DecodeModel:
    """This rank's stage, lm_head and KV cache; memory peaks restart from here."""
    with torch.inference_mode(), closing(ShardReader(checkpoint, ctx.device, ctx.dtype)) as rd:
        model = load_decode(ctx, rd)
    barrier(ctx)
    metrics.reset_peaks(ctx)
    return model


def _now(ctx: RankContext) -> float:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return time.perf_counter()


class _Sends:
    """Point-to-point sends in flight (the tensors stay referenced until sent)."""

    def __init__(self, limit: int = 2) -> None:
        self.limit, self.items = limit, []  # type: ignore[var-annotated]

    def post(self, t: Tensor, dst: int, group: dist.ProcessGroup | None = None) -> None:
        while len(self.items) >= self.limit:
            self._wait(self.items.pop(0))
        op = dist.P2POp(dist.isend, t, dst, group)
        self.items.append((t, dist.batch_isend_irecv([op])))

    @staticmethod
    def _wait(item: tuple[Tensor, list[dist.Work]]) -> None:
        for w in item[1]:
            w.wait()

    def drain(self) -> None:
        for item in self.items:
            self._wait(item)
        self.items.clear()


def generate(
    ctx: RankContext, model: DecodeModel, prompt: Tensor | None, ropes: list[Rope]
) -> tuple[float, float, Tensor | None]:
    """One greedy decode of this rank's rows: (seconds to its step-0 end, to its end, tokens)."""
    cfg, lay = ctx.cfg, ctx.layout
    nmb, r, steps = cfg.microbatches, lay.micro_rows, cfg.generate
    sp, part = lay.parts("seq"), lay.part("seq")
    slots = [step_slots(cfg, lay.positions, sp, part, t) for t in range(steps)]
    n_stages = lay.n_stages
    prev = None if lay.is_first_stage else lay.stage_peer(-1)
    nxt = None if lay.is_last_stage else lay.stage_peer(+1)
    back_from = lay.stage_peer(n_stages - 1) if lay.is_first_stage and n_stages > 1 else None
    back_to = lay.stage_peer(1 - n_stages) if lay.is_last_stage and n_stages > 1 else None
    items = [(t, m) for t in range(steps) for m in range(nmb)]

    def post_recv(i: int) -> tuple[Tensor, list[dist.Work]] | None:
        t, _ = items[i]
        if prev is not None:
            s = len(slots[t].positions)
            buf = torch.empty((r, s, cfg.model.hidden), device=ctx.device, dtype=ctx.dtype)
            src, group = prev, None
        elif back_from is not None and t > 0:
            buf = torch.empty(r, device=ctx.device, dtype=torch.long)
            src, group = back_from, model.token_group
        else:
            return None
        return buf, dist.batch_isend_irecv([dist.P2POp(dist.irecv, buf, src, group)])

    tokens = None
    if lay.is_last_stage:
        tokens = torch.empty((len(lay.batch_rows), steps), device=ctx.device, dtype=torch.long)
    sends = _Sends()
    ttft = 0.0
    start = _now(ctx)
    pending = post_recv(0)
    for i, (t, m) in enumerate(items):
        rows = slice(m * r, (m + 1) * r)
        if pending is not None:
            x, works = pending
            for w in works:
                w.wait()
            if prev is None:
                x = x.view(r, 1)  # token ids sent back by the last stage
        elif t == 0:
            assert prompt is not None
            x = prompt[rows]
        else:  # one stage: the tokens it just chose
            assert tokens is not None
            x = tokens[rows, t - 1 : t]
        pending = post_recv(i + 1) if i + 1 < len(items) else None
        y = model(x, ropes[t], rows, slots[t], t == 0)
        del x
        if nxt is not None:
            sends.post(y, nxt)
        else:
            assert tokens is not None
            tok = model.next_tokens(y, t == 0)
            tokens[rows, t] = tok
            if back_to is not None and t + 1 < steps:
                sends.post(tok, back_to, model.token_group)
        del y
        if t == 0 and m == nmb - 1:
            ttft = _now(ctx) - start
    sends.drain()
    return ttft, _now(ctx) - start, tokens


def step_ropes(ctx: RankContext) -> list[Rope]:
    """RoPE tables of each step: the rank's prompt positions, then position context + t - 1."""
    cfg, m = ctx.cfg, ctx.cfg.model
    prompt = rope_tables(torch.tensor(ctx.layout.positions, device=ctx.device), m.head_dim,
                         m.rope_theta, ctx.dtype)  # fmt: skip
    new = torch.arange(cfg.context, cfg.context + cfg.generate - 1, device=ctx.device)
    tab = rope_tables(new, m.head_dim, m.rope_theta, ctx.dtype)
    return [prompt] + [Rope(tab.cos[i : i + 1], tab.sin[i : i + 1]) for i in range(len(new))]


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
    write the JSON (rank 0)."""
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
        data = {
            "phase": "decode",
            "batch": cfg.batch,
            "context": cfg.context,
            "generate": cfg.generate,
            "generated": full.tolist(),
            "matches_reference": None,
            "mesh": [list(a) for a in cfg.mesh],
            "microbatches": cfg.microbatches,
            "ranks": ranks,
            "world_size": cfg.world_size,
            "device": ctx.device.type,
            "dtype": cfg.dtype,
            "torch_version": torch.__version__,
            "max_abs_error": None,
            "max_rel_error": None,
            **decode_metrics.decode_times(cfg.batch, cfg.generate, result.ttfts, result.latencies),
            **(extra or {}),
        }
        if cfg.check_reference:
            from planc.backends.torch.reference_decode import reference_generate

            ref = reference_generate(cfg, checkpoint, ctx.device)
            data["matches_reference"] = bool(torch.equal(full.cpu(), ref.cpu()))
            if not data["matches_reference"]:
                data["reference_generated"] = ref.tolist()
        metrics.write_metrics(out_path, data)
    barrier(ctx)  # the JSON exists before any rank exits
    return data
