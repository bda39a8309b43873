"""One rank's causal LM for greedy decode: its pipeline stage (runtime/model.py, the same shards
as prefill), the stage's KV cache, and on the last stage the lm_head and the argmax.

The checkpoint is a LlamaForCausalLM / MixtralForCausalLM (tensor names `model.*` and
`lm_head.weight`; reference.save_random_checkpoint writes one when phase is decode). lm_head
[vocab, hidden] is whole on every last-stage rank, as the compiler counts it (decode.py), so
tensor-parallel peers compute the same logits and need no gather.

The cache is allocated once, at load, for context + generate positions
(planc/layout/schedule.py), zeros:
per layer k and v [rows, kv_heads_local, capacity, head_dim_local] in the run dtype. Bytes per
rank: layers * 2 * rows * kv_heads_local * capacity * head_dim_local * e, the compiler's
kv_cache row. Runs overwrite it from slot 0, so warm-up and timed repeats reuse it.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from planc.backends.torch.runtime.decode_attention import CachedAttention
from planc.backends.torch.runtime.dist import RankContext
from planc.backends.torch.runtime.layers import DecoderLayer, Rope
from planc.backends.torch.runtime.layout import seq_positions
from planc.backends.torch.runtime.model import StageModel, load_stage
from planc.backends.torch.weights import ShardReader
from planc.layout import mesh
from planc.layout.schedule import Slots, cache_capacity, last_position_part


class DecodeModel(nn.Module):
    """The stage's layers with cached attention; `forward` runs one step of one microbatch."""

    lm_head: Tensor | None

    def __init__(self, ctx: RankContext, stage: StageModel, lm_head: Tensor | None) -> None:
        super().__init__()
        self.stage = stage
        if lm_head is not None:
            self.register_buffer("lm_head", lm_head)
        else:
            self.lm_head = None
        # Plain lists: the attention blocks are already children of stage.layers (weight_bytes
        # counts them once), and the cache is not a weight.
        self.layers = [cast(DecoderLayer, layer) for layer in stage.layers]
        self.attns = [CachedAttention(layer.attn) for layer in self.layers]
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

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.cache for t in kv)

    def forward(self, x: Tensor, rope: Rope, rows: slice, slots: Slots, prefill: bool) -> Tensor:
        """x: token ids [r, s] on the first stage, else the received hidden [r, s, hidden] (the
        stage owns it). Returns the hidden to send on, or the final norm on the last stage."""
        if self.stage.embed is not None:
            x = F.embedding(x, self.stage.embed)
        for layer, attn, (k, v) in zip(self.layers, self.attns, self.cache):
            x.add_(attn(x, rope, (k[rows], v[rows]), slots, prefill))
            x.add_(layer.mlp(x))
        if self.stage.norm is not None:
            return self.stage.norm(x)
        return x

    def next_tokens(self, h: Tensor, prefill: bool) -> Tensor:
        """Greedy tokens [r] (int64) from the last stage's final norm h [r, s, hidden]: the
        prompt's last position after prefill, the one new position after a step."""
        assert self.lm_head is not None
        if not prefill:
            return F.linear(h[:, -1], self.lm_head).argmax(dim=-1)
        if self.holds_last:
            tok = F.linear(h[:, self.last_index], self.lm_head).argmax(dim=-1)
        else:
            tok = torch.empty(h.shape[0], dtype=torch.long, device=h.device)
        if self.seq_group is not None:
            dist.broadcast(tok, src=self.last_src, group=self.seq_group)
        return tok


def load_decode(ctx: RankContext, reader: ShardReader) -> DecodeModel:
    """This rank's stage, lm_head (last stage) and allocated KV cache."""
    lay, m = ctx.layout, ctx.cfg.model
    stage = load_stage(ctx, reader)
    lm_head = None
    if lay.is_last_stage:
        assert m.vocab is not None
        lm_head = reader.place(reader.full("lm_head.weight", (m.vocab, m.hidden)))
    return DecodeModel(ctx, stage, lm_head)
