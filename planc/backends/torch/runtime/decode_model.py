"""One rank's causal LM for greedy decode: its pipeline stage (runtime/model.py, the same shards
as prefill), the stage's KV cache, and on the last stage the lm_head and the argmax.

The checkpoint is a LlamaForCausalLM / MixtralForCausalLM (tensor names `model.*` and
`lm_head.weight`; reference.save_random_checkpoint writes one when phase is decode). With tied
embeddings it has no `lm_head.weight`: the lm_head is `embed_tokens.weight`, held once by a rank
that also embeds (the same tensor) and read by a last stage that does not. The lm_head
[vocab, hidden] is whole on every last-stage rank, so tensor-parallel peers compute the same
logits; with `shard vocab` each holds its rows and the greedy token is agreed over the group
(vocab_parallel.greedy_tokens). As the compiler counts it (compiler/vocab.py).

The cache is allocated once, at load, for context + generate positions
(planc/layout/schedule.py), zeros:
per layer k and v [rows, kv_heads_local, capacity, head_dim_local] in the run dtype. Bytes per
rank: layers * 2 * rows * kv_heads_local * capacity * head_dim_local * e, the compiler's
kv_cache row. Runs overwrite it from slot 0, so warm-up and timed repeats reuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from planc.backends.torch.runtime import decode_step, vocab_parallel
from planc.backends.torch.runtime.decode_step import StaticStep
from planc.backends.torch.runtime.dist import RankContext
from planc.backends.torch.runtime.layers import Attention, DecoderLayer, Rope
from planc.backends.torch.runtime.layout import seq_positions
from planc.backends.torch.runtime.model import StageModel, load_stage
from planc.backends.torch.weights import ShardReader
from planc.layout import mesh
from planc.layout.schedule import Slots, cache_capacity, last_position_part
from planc.layout.vocab import EMBED, LM_HEAD

if TYPE_CHECKING:
    from planc.backends.torch.runtime.textgen import TextBatch


class DecodeModel(nn.Module):
    """The stage's layers with cached attention; `forward` runs one step of one microbatch."""

    lm_head: Tensor | None

    def __init__(self, ctx: RankContext, stage: StageModel, lm_head: Tensor | None) -> None:
        super().__init__()
        self.stage = stage
        if lm_head is not None and lm_head is not stage.embed:
            self.register_buffer("lm_head", lm_head)
        else:  # none, or tied to the stage's embedding: held (and counted) once, there
            self.lm_head = lm_head
        self.vocab_slice, self.vocab_group = ctx.layout.vocab_slice, ctx.dim_group("vocab")
        self.vocab = ctx.cfg.model.vocab or 0
        # Plain lists: the attention blocks are already children of stage.layers (weight_bytes
        # counts them once), and the cache is not a weight.
        self.layers = [cast(DecoderLayer, layer) for layer in stage.layers]
        self.attns = [cast(Attention, layer.attn) for layer in self.layers]
        cfg, lay = ctx.cfg, ctx.layout
        sp = lay.parts("seq")
        cap = cache_capacity(cfg.context, cfg.generate, sp)
        self.cache: list[tuple[Tensor, Tensor]] = []
        for attn in self.attns:
            kv, d = attn.cache_dims
            shape = (len(lay.batch_rows), kv, cap, d)
            self.cache.append((
                torch.zeros(shape, device=ctx.device, dtype=ctx.dtype),
                torch.zeros(shape, device=ctx.device, dtype=ctx.dtype),
            ))  # fmt: skip
        # Prefill: the part of the sequence group that holds the prompt's last position picks
        # the first token and broadcasts it over the group.
        parts = [seq_positions(cfg, sp, i) for i in range(sp)]
        part, self.last_index = last_position_part(parts, cfg.context)
        self.holds_last = part == lay.part("seq")
        self.seq_group = ctx.dim_group("seq")
        self.last_src = mesh.with_part(cfg.mesh, lay.coords, lay.axes("seq"), part)
        self._static: StaticStep | None = None

    def static_step(self, ctx: RankContext, text: TextBatch | None = None) -> StaticStep | None:
        """The static decode steps of this rank (made once), or None when this run's steps run
        in generate's eager rounds (decode_step.static_reason)."""
        if decode_step.static_reason(ctx, self, text) is not None:
            return None
        if self._static is None:
            self._static = decode_step.StaticStep(ctx, self)
        return self._static

    def step_kind(self, ctx: RankContext, text: TextBatch | None = None) -> dict[str, str]:
        """How this run's decode steps run, for the run's metrics: the step ("cuda_graph",
        "eager (static step)" or the eager rounds and why) and the attention kernel."""
        static = self.static_step(ctx, text)
        if static is None:
            why = decode_step.static_reason(ctx, self, text)
            return {"decode_step": f"eager rounds ({why})", "decode_attention": "core step"}
        return {"decode_step": static.mode, "decode_attention": static.kernel}

    def graph_pool_bytes(self) -> int | None:
        return None if self._static is None else self._static.pool_bytes()

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.cache for t in kv)

    def forward(
        self,
        x: Tensor,
        rope: Rope,
        rows: slice,
        slots: Slots,
        prefill: bool,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x: token ids [r, s] on the first stage, else the received hidden [r, s, hidden] (the
        stage owns it); mask: the cache slots a decode step sees (layers.Attention). Returns the
        hidden to send on, or the final norm on the last stage."""
        if self.stage.embed is not None:
            x = self.stage.lookup(x)
        for layer, attn, (k, v) in zip(self.layers, self.attns, self.cache):
            x.add_(attn(x, rope, (k[rows], v[rows]), slots, prefill, mask))
            x.add_(layer.mlp(x))
        if self.stage.norm is not None:
            return self.stage.norm(x)
        return x

    def next_tokens(
        self,
        h: Tensor,
        prefill: bool,
        choose: Callable[[Tensor], Tensor] | None = None,
        last: Tensor | None = None,
    ) -> Tensor:
        """Tokens [r] (int64) from the last stage's final norm h [r, s, hidden], greedy or as
        `choose` picks from logits [r, vocab]: at the prompt's last position after prefill
        (per row: local index `last` [r], -1 where another rank of the sequence group holds
        it, for prompts of different lengths), the new one after a step."""
        assert self.lm_head is not None
        if not prefill:
            return self._pick(h[:, -1], choose)
        if last is not None:
            rows = torch.arange(h.shape[0], device=h.device)
            tok = self._pick(h[rows, last.clamp(min=0)], choose)
            if self.seq_group is not None:  # one rank of the group holds each row's last token
                tok = torch.where(last >= 0, tok, 0)
                dist.all_reduce(tok, group=self.seq_group)
            return tok
        if self.holds_last:  # the whole vocabulary group holds it (no seq split on its axes)
            tok = self._pick(h[:, self.last_index], choose)
        else:
            tok = torch.empty(h.shape[0], dtype=torch.long, device=h.device)
        if self.seq_group is not None:
            dist.broadcast(tok, src=self.last_src, group=self.seq_group)
        return tok

    def _pick(self, h: Tensor, choose: Callable[[Tensor], Tensor] | None) -> Tensor:
        """Tokens [r] of final-norm rows h [r, hidden]: greedy over the (vocab-parallel)
        lm_head, or `choose` over the whole vocabulary's logits (gathered over the group)."""
        assert self.lm_head is not None
        if choose is None:
            return vocab_parallel.greedy_tokens(h, self.lm_head, self.vocab_slice,
                                                self.vocab_group)  # fmt: skip
        return choose(vocab_parallel.all_logits(h, self.lm_head, self.vocab, self.vocab_group))


def load_decode(ctx: RankContext, reader: ShardReader) -> DecodeModel:
    """This rank's stage, lm_head (last stage) and allocated KV cache."""
    lay, m = ctx.layout, ctx.cfg.model
    stage = load_stage(ctx, reader)
    lm_head = None
    if lay.is_last_stage:
        assert m.vocab is not None
        tied = m.features.tie_embeddings
        if tied and stage.embed is not None:
            lm_head = stage.embed
        else:
            lm_head = vocab_parallel.read_rows(reader, EMBED if tied else LM_HEAD, m.vocab,
                                               m.hidden, lay.vocab_slice)
    return DecodeModel(ctx, stage, lm_head)
