"""Head x head_dim attention core (seed 001: `shard heads over n` + `shard head_dim over m`).

Rank (i, j) holds head group i (its query heads and their kv heads, as layout.q_heads /
layout.kv_heads say) and slice j of every one of those heads' dimensions, in
planc/layout/headdim.py's order (each RoPE pair (t, t + head_dim/2) on one rank). Its q/k/v rows are
`head * head_dim + t` for t in headdim_slice_indices(head_dim, m, j) (headdim_shard_indices when
kv_heads divides by n), read as two contiguous runs per head; o_proj takes the same columns.
A family with q/k RMSNorm (Qwen3) normalises each head over its whole head_dim: each rank's float32
sum of squares over its slice is all-reduced over the m ranks first (layers.HeadNorm).
Partial scores q_j k_j^T are summed over the m ranks of the head group (all_reduce, float32),
softmax and P V run on the local slice, and o_proj is row-parallel over the whole n x m grid: one
all_reduce of [T, hidden] over the ranks that differ only on the heads and head_dim axes. The
MLP is cores.make_mlp's, column/row-parallel over splits["ffn"] (the seed shards it over n, m).

Memory: planc/cost/memory.py's `head_dim_terms` (the head_dim record's key): layers.py's terms
with local widths over the head_dim slice, plus partial_scores (float32, all-reduced in place)
and probs; what this block allocates beyond them is listed there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.distributed as dist
from torch import Tensor

from planc.backends.torch.runtime.headdim_attention import headdim_attention, rope_slice
from planc.backends.torch.runtime.layers import (
    Attention,
    LocalCore,
    Rope,
    assemble_attention,
    attention_weights,
    load_qk_norm,
)
from planc.layout.headdim import headdim_rows, headdim_slice_indices

if TYPE_CHECKING:
    from planc.backends.torch.runtime.dist import RankContext
    from planc.backends.torch.weights import ShardReader


class HeadDimCore(LocalCore):
    """Attention on this rank's slice j of m of every local head's head_dim: partial scores
    summed over the head_dim group, for the prompt (causal) and a decode step (over the cache's
    filled slots, which hold the same slice)."""

    def __init__(self, head_dim: int, causal: bool, split: tuple[int, int],
                 dim_group: dist.ProcessGroup | None) -> None:
        super().__init__(head_dim, causal)
        self.slices, self.index = split  # head_dim slices and this rank's slice
        self.dim_group = dim_group

    def rope(self, rope: Rope) -> Rope:
        return Rope(*rope_slice(rope.cos, rope.sin, self.head_dim, self.slices, self.index))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return headdim_attention(q, k, v, self.dim_group, causal=self.causal, scale=self.scale)

    def step(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return headdim_attention(q, k, v, self.dim_group, causal=False, scale=self.scale,
                                 keys=mask)  # fmt: skip


def make_attention(ctx: RankContext, reader: ShardReader, layer: int) -> Attention:
    """Layer `layer`'s attention for splits["head_dim"] (with or without splits["heads"])."""
    # head_dim with seq (E056) and head_dim's RoPE pairs (V310) are proved by the compiler.
    cfg, lay, m = ctx.cfg, ctx.layout, ctx.cfg.model
    parts, j = lay.parts("head_dim"), lay.part("head_dim")
    d = m.head_dim
    rows_q = headdim_rows(lay.q_heads, d, parts, j)
    rows_kv = headdim_rows(lay.kv_heads, d, parts, j)
    out_group = ctx.group(lay.axes("heads") + lay.axes("head_dim"))
    wqkv, wo = attention_weights(ctx, reader, layer, (rows_q, rows_kv), out_group)
    dim_group = ctx.dim_group("head_dim")
    qk_norm = load_qk_norm(ctx, reader, layer, headdim_slice_indices(d, parts, j), dim_group)
    core = HeadDimCore(d, cfg.causal, (parts, j), dim_group)
    return assemble_attention(ctx, reader, layer, (wqkv, wo), core, out_group, qk_norm)
