"""The schedules of both phases over the pipeline stages, and gathering their outputs (hidden
states, tokens) onto rank 0.

Prefill (`forward`, inference, GPipe order): every stage walks the microbatches in order. A stage
posts the receive of microbatch m+1 before computing m, so the transfer overlaps compute, and
keeps at most one send in flight, so a stage holds at most two outgoing activations.
Tensor-parallel peers each send their own (identical) copy to their peer on the next stage: no
extra gather. The last stage writes each microbatch's output into one preallocated
[rows, seq, hidden] tensor.

Decode (phase decode, `generate`): items are (step t, microbatch m), numbered
i = t * microbatches + m. Step 0 is the prefill of the prompt, later steps one token per
sequence. The schedule goes in rounds (planc/layout/schedule.py): in each round every stage runs
at most one item, then exchanges with its neighbours in one batch_isend_irecv: it sends the
item's hidden state to the next stage (the last stage: the argmax token ids [rows], the static
step's [rows, 1], back to the first stage, its peer with the same tensor / data / sequence coordinates) and receives what its
previous stage (the first stage: the last stage) ran in the same round. Both ends of every message are in the same
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
stage's first tokens (metrics.decode_times).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from planc.backends.torch.runtime.decode_step import Exchange
from planc.backends.torch.runtime.dist import RankContext
from planc.backends.torch.runtime.layers import Rope, rope_tables
from planc.backends.torch.runtime.layout import output_tiles, token_holders
from planc.backends.torch.runtime.model import StageModel
from planc.layout.schedule import checks_stop, stage_rounds, step_slots

if TYPE_CHECKING:
    from planc.backends.torch.runtime.textgen import TextBatch


def _irecv(t: Tensor, src: int) -> list[dist.Work]:
    return dist.batch_isend_irecv([dist.P2POp(dist.irecv, t, src)])


def _isend(t: Tensor, dst: int) -> list[dist.Work]:
    return dist.batch_isend_irecv([dist.P2POp(dist.isend, t, dst)])


def _wait(works: list[dist.Work]) -> None:
    for w in works:
        w.wait()


def forward(
    ctx: RankContext, model: StageModel, inputs: Tensor | None, rope: Rope
) -> Tensor | None:
    """Run this rank's stage on every microbatch. Returns the output on the last stage.

    inputs: this rank's rows (token ids or embeddings) on the first stage, else None.
    """
    lay, cfg = ctx.layout, ctx.cfg
    n_micro, rows = cfg.microbatches, lay.micro_rows
    shape = (rows, len(lay.positions), cfg.model.hidden)
    prev = None if lay.is_first_stage else lay.stage_peer(-1)
    nxt = None if lay.is_last_stage else lay.stage_peer(+1)

    def post_recv() -> tuple[Tensor, list[dist.Work]]:
        assert prev is not None
        buf = torch.empty(shape, device=ctx.device, dtype=ctx.dtype)
        return buf, _irecv(buf, prev)

    out = None
    if nxt is None and n_micro > 1:
        out = torch.empty((len(lay.batch_rows), *shape[1:]), device=ctx.device, dtype=ctx.dtype)
    pending = post_recv() if prev is not None else None
    in_flight: tuple[Tensor, list[dist.Work]] | None = None
    for m in range(n_micro):
        if pending is not None:
            x, works = pending
            _wait(works)
            pending = post_recv() if m + 1 < n_micro else None
        else:
            assert inputs is not None
            x = inputs[m * rows : (m + 1) * rows]  # the model embeds (or copies) it
        y = model(x, rope)  # every microbatch has the same positions: one rope table
        del x
        if nxt is not None:
            if in_flight is not None:
                _wait(in_flight[1])
            in_flight = (y, _isend(y, nxt))
        elif out is None:
            out = y
        else:
            out[m * rows : (m + 1) * rows].copy_(y)
        del y
    if in_flight is not None:
        _wait(in_flight[1])
    return out


def gather_output(ctx: RankContext, out: Tensor | None, stage: int | None = None
                  ) -> Tensor | None:
    """The full [batch, seq, hidden] output on rank 0 (None elsewhere), by point-to-point; with
    `stage`, what that stage's ranks pass as `out` (a layer's output, say)."""
    cfg = ctx.cfg
    tiles = output_tiles(cfg, stage)
    if ctx.rank != 0:
        if any(r == ctx.rank for r, _, _ in tiles):
            assert out is not None
            dist.send(out.contiguous(), dst=0)
        return None
    full = torch.empty((cfg.batch, cfg.seq, cfg.model.hidden), device=ctx.device, dtype=ctx.dtype)
    for rank, rows, positions in tiles:
        if rank == 0:
            assert out is not None
            tile = out
        else:
            tile = torch.empty(
                (len(rows), len(positions), cfg.model.hidden), device=ctx.device, dtype=ctx.dtype
            )
            dist.recv(tile, src=rank)
        idx = torch.tensor(positions, device=ctx.device)
        full[rows.start : rows.stop].index_copy_(1, idx, tile)
    return full


def _now(ctx: RankContext) -> float:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return time.perf_counter()


def generate(
    ctx: RankContext,
    model: StageModel,
    prompt: Tensor | None,
    ropes: list[Rope],
    text: TextBatch | None = None,
) -> tuple[float, float, Tensor | None]:
    """One decode of this rank's rows: (seconds to its step-0 end, to its end, tokens). Greedy
    over equal-length prompts, or with `text` real prompts (right-padded to the context): its
    per-row positions, cache mask, token choice and stop (runtime/textgen.py). Steps that can
    run at static addresses run so (runtime/decode_step.py: CUDA graphs): on one stage step by
    step, on several in these rounds, each decode item one replay that ends with the round's
    exchange; the prefill items and their exchanges stay eager."""
    static = model.static_step(ctx, text)
    if static is not None and ctx.layout.n_stages == 1:
        return _generate_static(ctx, model, prompt, ropes, text)
    cfg, lay = ctx.cfg, ctx.layout
    nmb, r = cfg.microbatches, lay.micro_rows
    steps = cfg.generate if text is None else text.steps
    sp, part = lay.parts("seq"), lay.part("seq")
    slots = [step_slots(cfg.context, lay.positions, sp, part, t) for t in range(steps)]
    p, k = lay.n_stages, lay.stage
    send_to, recv_from = lay.decode_peers()
    last = lay.is_last_stage

    tokens = None
    if static is not None:
        static.tokens.zero_()  # a batch that stops early leaves its later columns 0
        tokens = static.tokens if lay.is_last_stage else None
    elif lay.is_last_stage:
        tokens = torch.zeros((len(lay.batch_rows), cfg.generate), device=ctx.device,
                             dtype=torch.long)  # fmt: skip
    inbox: dict[int, Tensor] = {}  # item -> its received input (hidden state or token ids)
    exchange: tuple[list[dist.P2POp], list[dist.Work]] = ([], [])
    ttft = 0.0
    start = _now(ctx)
    for i, rnd in enumerate(stage_rounds(nmb, steps, p, k)):
        for w in exchange[1]:  # the last round's inputs are here and its sends are done
            w.wait()
        exchange = ([], [])  # waited once: gloo's work objects do not return a second wait
        if text is not None and p > 1 and checks_stop(i, nmb, p) and text.all_stopped():
            break  # nothing is in flight between rounds: every stage may leave here
        ops: list[dist.P2POp] = []
        if rnd.run is not None and static is not None and rnd.run >= nmb:
            # a decode item: one replay, the round's exchange inside it
            t, m = divmod(rnd.run, nmb)
            assert rnd.recv is None or rnd.recv >= nmb  # the input of a decode item too
            recv = None if rnd.recv is None else rnd.recv % nmb
            tok = static.step(m, t, Exchange(rnd.send, recv))
            if text is not None and last:
                rows = slice(m * r, (m + 1) * r)
                text.stopped[rows] |= torch.isin(tok[:, 0], text.eos)
                text.steps_run = t + 1
            continue
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
            if last:
                assert tokens is not None
                if text is None:
                    y = tokens[rows, t] = model.next_tokens(y, t == 0)
                else:
                    y = tokens[rows, t] = text.next_tokens(model, y, rows, t)
            if static is not None:  # its prefill: the state its decode steps start from
                static.start(m, y if last else None, None if text is None else text.lengths[rows])
                if last:
                    y = static.states[m].tok  # what the first stage's state receives
            if rnd.send:
                ops.append(dist.P2POp(dist.isend, y, send_to))
            del y
            if t == 0 and m == nmb - 1:
                ttft = _now(ctx) - start
            if text is not None and p == 1 and m == nmb - 1 and text.all_stopped():
                break  # every rank runs every item when there is one stage: all agree
        if rnd.recv is not None and static is not None and rnd.recv >= nmb:
            ops.append(dist.P2POp(dist.irecv, static.inbox(rnd.recv % nmb), recv_from))
        elif rnd.recv is not None:
            if k > 0:
                n = len(slots[rnd.recv // nmb].positions)
                buf = torch.empty((r, n, cfg.model.hidden), device=ctx.device, dtype=ctx.dtype)
            else:
                buf = torch.empty(r, device=ctx.device, dtype=torch.long)
            inbox[rnd.recv] = buf
            ops.append(dist.P2POp(dist.irecv, buf, recv_from))
            # the inbox and the op hold it until its item runs: a name left here kept the
            # last prompt's received hidden state alive through the static steps' first
            # capture (a 2-stage plan's allocation record, benchmarks/results/
            # h200x2_decode_pp_run51_trace_report.txt: 4 MiB above the predicted peak)
            del buf
        # Both ends of every message put it in the same round's batch, and every rank walks the
        # rounds in order: one process group, no ordering between channels to get wrong (NCCL
        # runs a group's point-to-point ops on one stream; see the module docstring).
        exchange = (ops, dist.batch_isend_irecv(ops) if ops else [])
    for w in exchange[1]:
        w.wait()
    return ttft, _now(ctx) - start, tokens


def _generate_static(
    ctx: RankContext,
    model: StageModel,
    prompt: Tensor | None,
    ropes: list[Rope],
    text: TextBatch | None,
) -> tuple[float, float, Tensor | None]:
    """generate() on one stage with static decode steps: every microbatch's prompt, then
    step by step every microbatch's token (a graph replay each on CUDA)."""
    cfg, lay = ctx.cfg, ctx.layout
    static = model.static_step(ctx, text)
    assert static is not None and prompt is not None
    nmb, r = cfg.microbatches, lay.micro_rows
    steps = cfg.generate if text is None else text.steps
    first = step_slots(cfg.context, lay.positions, 1, 0, 0)
    static.tokens.zero_()  # a batch that stops early leaves its later columns 0, as eagerly
    start = _now(ctx)
    for m in range(nmb):
        rows = slice(m * r, (m + 1) * r)
        y = model(prompt[rows], ropes[0], rows, first, True)
        if text is None:
            static.start(m, model.next_tokens(y, True), None)
        else:
            static.start(m, text.next_tokens(model, y, rows, 0), text.lengths[rows])
        del y
    ttft = _now(ctx) - start
    for t in range(1, steps):
        for m in range(nmb):
            tok = static.step(m, t)
            if text is not None:
                rows = slice(m * r, (m + 1) * r)
                text.stopped[rows] |= torch.isin(tok[:, 0], text.eos)
        if text is not None:
            text.steps_run = t + 1
            if text.all_stopped():
                break
    return ttft, _now(ctx) - start, static.tokens


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
