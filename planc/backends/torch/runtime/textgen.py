"""Prompts in, text out on the ranks of an emitted decode program (`--prompt` / `--prompts`):
the options it takes, the request rank 0 reads and broadcasts, and the decode of real prompts.

Prompts of different lengths share one batch: each is right-padded to the plan's context (the
shapes the plan was verified for). Prefill is causal, so a prompt's tokens never see the padding
after them and the prefill runs unchanged; the first token comes from the prompt's own last
position. Generated tokens go to cache slots context, context + 1, ... as always, at position
len + t - 1 of their own sequence (per-row RoPE), and a decode step masks the padded slots
[len, context): each sequence is computed as if alone, which is what Hugging Face generate
computes with left padding and an attention mask (its positions are the mask's cumsum).

More prompts than the plan's batch run as consecutive batches (the cache is rewritten each
time; filler rows of the last batch are dropped). A sequence stops at a stop token; the batch
stops when every sequence has. With one pipeline stage every rank runs every step: one
all_reduce after each step decides. With several, stages run different items in a round, but
nothing is in flight between two rounds (runtime/pipeline.py generate): one all_reduce at the
top of each round, where only last stages (which choose the tokens) can say no, lets every
stage leave at the same round.

Sampling (temperature > 0): softmax(logits / T) in float64 on the CPU, top-p (the most likely
tokens whose mass reaches p; always the first), then inverse-CDF with one uniform drawn from a
generator seeded by (seed, prompt index, step). Every rank holding a row draws the same number
from the same probabilities, and a prompt's text depends neither on the plan's batch, split or
microbatches nor on the other prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from planc.backends.torch import metrics
from planc.backends.torch.prompts import (
    GenerateRequest,
    add_arguments,  # noqa: F401  (the emitted program calls textgen.add_arguments)
    load_tokenizer,
    options,
    prepare,
    records,
)
from planc.backends.torch.runtime.dist import RankContext, barrier
from planc.backends.torch.runtime.layers import Rope
from planc.backends.torch.runtime.model import StageModel
from planc.backends.torch.runtime.pipeline import (
    gather_tokens,
    generate,
    rope_at,
    step_ropes,
)
from planc.diagnostics import PlancError, render
from planc.layout.schedule import Slots


def requested(args: argparse.Namespace) -> bool:
    return args.prompt is not None or args.prompts is not None


def read_request(ctx: RankContext, args: argparse.Namespace) -> GenerateRequest:
    """Rank 0 reads and checks the prompts, every rank gets the request; on bad input rank 0
    prints the diagnostic and every rank exits 1."""
    payload: Any = None
    if ctx.rank == 0:
        try:
            payload = asdict(prepare(ctx.cfg, args.weights, args.prompt, args.prompts,
                                     options(args)))  # fmt: skip
        except PlancError as e:
            payload = render(e.diagnostic, {})
    box = [payload]
    dist.broadcast_object_list(box, src=0, device=ctx.device)
    if isinstance(box[0], str):
        if ctx.rank == 0:
            print(box[0], file=sys.stderr)
        raise SystemExit(1)
    return GenerateRequest(**box[0])


def uniform(seed: int, key: int, step: int) -> float:
    """The uniform number in [0, 1) of (seed, prompt, step): the same on every rank."""
    mixed = ((seed * 1_000_003 + key) * 1_000_003 + step) % (2**63)
    return float(torch.rand((), generator=torch.Generator().manual_seed(mixed),
                            dtype=torch.float64))  # fmt: skip


def sample(logits: Tensor, keys: list[int], step: int, temperature: float, top_p: float,
           seed: int) -> Tensor:
    """Tokens [r] drawn from logits [r, vocab] (see the module docstring)."""
    probs = torch.softmax(logits.detach().double().cpu() / temperature, dim=-1)
    ranked, order = probs.sort(dim=-1, descending=True, stable=True)
    ranked = ranked * ((ranked.cumsum(dim=-1) - ranked) < top_p)  # mass before it below p
    cum = ranked.cumsum(dim=-1)
    u = torch.tensor([uniform(seed, k, step) for k in keys], dtype=torch.float64)
    pick = torch.searchsorted(cum, (u * cum[:, -1])[:, None], right=True)
    pick = pick.clamp(max=probs.shape[-1] - 1)
    return order.gather(1, pick).squeeze(1).to(logits.device)


class TextBatch:
    """One batch of real prompts on this rank: what generate() asks of it per step."""

    def __init__(self, ctx: RankContext, req: GenerateRequest, index: list[int]) -> None:
        """index: the prompt of each row of the plan's batch (-1: a filler row)."""
        self.ctx, self.req, self.steps = ctx, req, req.max_new_tokens
        rows = ctx.layout.batch_rows
        self.keys = [index[b] for b in rows]
        lengths = [len(req.ids[i]) if i >= 0 else 1 for i in self.keys]
        self.lengths = torch.tensor(lengths, device=ctx.device)
        # The prompt positions this rank caches, slot by slot (a sequence split holds a part).
        self.positions = torch.tensor(ctx.layout.positions, device=ctx.device)
        self.eos = torch.tensor(req.eos, device=ctx.device, dtype=torch.long)
        self.stopped = torch.tensor([i < 0 for i in self.keys], device=ctx.device)
        self.steps_run = 0  # on the last stage: steps whose tokens were chosen

    def rope(self, rows: slice, t: int) -> Rope:
        """Step t's token of each row sits at position len + t - 1 of its own sequence."""
        return rope_at(self.ctx, self.lengths[rows] + t - 1)

    def mask(self, rows: slice, slots: Slots) -> Tensor:
        """[r, 1, 1, valid]: the slots of prompt positions below len, and every generated one
        (slots after the rank's prompt slots)."""
        n = len(self.positions)
        pos = torch.cat((self.positions, self.positions.new_zeros(max(0, slots.valid - n))))
        seen = pos[None, : slots.valid] < self.lengths[rows, None]
        seen[:, n:] = True
        return seen[:, None, None, :]

    def last(self, rows: slice) -> Tensor:
        """The local index of each row's last prompt token, -1 where another rank holds it."""
        hit = self.positions[None, :] == (self.lengths[rows] - 1)[:, None]
        return torch.where(hit.any(dim=1), hit.int().argmax(dim=1), -1)

    def next_tokens(self, model: StageModel, h: Tensor, rows: slice, t: int) -> Tensor:
        last = self.last(rows) if t == 0 else None
        tok = model.next_tokens(h, t == 0, self.chooser(rows, t), last)
        self.stopped[rows] |= torch.isin(tok, self.eos)
        self.steps_run = max(self.steps_run, t + 1)
        return tok

    def chooser(self, rows: slice, t: int) -> Callable[[Tensor], Tensor] | None:
        """None: greedy (the model's argmax, vocab-parallel); else a draw from the logits."""
        if self.req.temperature == 0:
            return None
        req, keys = self.req, self.keys[rows]
        return lambda logits: sample(logits, keys, t, req.temperature, req.top_p, req.seed)

    def all_stopped(self) -> bool:
        """Whether every sequence of every rank has stopped (collective over the world; only
        last stages choose tokens, so only they can say no)."""
        done = self.stopped.all() if self.ctx.layout.is_last_stage else torch.tensor(True)
        flag = done.to(device=self.ctx.device, dtype=torch.int32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())


def _prompt_tile(ctx: RankContext, req: GenerateRequest, index: list[int]) -> Tensor:
    """This rank's tile of the batch's token ids [rows, its positions], each prompt
    right-padded to the context."""
    rows = ctx.layout.batch_rows
    ids = torch.zeros((len(rows), ctx.cfg.context), dtype=torch.long)
    for j, b in enumerate(rows):
        if index[b] >= 0:
            ids[j, : len(req.ids[index[b]])] = torch.tensor(req.ids[index[b]])
    return ids[:, ctx.layout.positions].to(ctx.device)


def run(
    ctx: RankContext,
    model: StageModel,
    req: GenerateRequest,
    checkpoint: str,
    out_path: str,
    output: str | None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]] | None:
    """Every prompt, in batches of the plan's batch size; rank 0 writes the JSONL (or prints it)
    and the metrics JSON (with the records under "results") and returns the records."""
    cfg, lay = ctx.cfg, ctx.layout
    ropes = step_ropes(ctx)
    generated: list[list[int]] = []
    ttfts, latencies, steps = [], [], []
    with torch.inference_mode():
        for start in range(0, len(req.ids), cfg.batch):
            chunk = list(range(start, min(start + cfg.batch, len(req.ids))))
            index = chunk + [-1] * (cfg.batch - len(chunk))
            prompt = _prompt_tile(ctx, req, index) if lay.is_first_stage else None
            barrier(ctx)
            text = TextBatch(ctx, req, index)
            ttft, latency, tokens = generate(ctx, model, prompt, ropes, text)
            ttfts.append(ttft)
            latencies.append(latency)
            steps.append(text.steps_run)
            full = gather_tokens(ctx, tokens)
            if full is not None:
                generated += full[: len(chunk)].tolist()
    slowest = torch.tensor([ttfts, latencies, steps], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # steps: the last stages
    result = None
    if ctx.rank == 0:
        result = records(req, generated, load_tokenizer(checkpoint))
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result)
        if output is not None:
            from planc.io import write_atomic

            write_atomic(output, lines)
        else:
            sys.stdout.write(lines)
        ttft_s, latency_s, _ = (float(x) for x in slowest.sum(dim=1))
        new = sum(len(r["tokens"]) for r in result)
        metrics.write_metrics(out_path, {
            **metrics.run_keys(ctx),
            "results": result,
            "prompts": len(result),
            "batches": len(ttfts),
            "steps": [int(x) for x in slowest[2].tolist()],  # per batch: stopped early if < max
            "output_tokens": new,
            "ttft_ms": ttft_s * 1e3,
            "latency_ms": latency_s * 1e3,
            "output_tokens_per_s": new / latency_s if latency_s > 0 else None,
            **(extra or {}),
        })  # fmt: skip
    barrier(ctx)  # the files exist before any rank exits
    return result
