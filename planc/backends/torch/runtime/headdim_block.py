"""Head x head_dim attention block (seed 001: `shard heads over n` + `shard head_dim over m`).

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

Memory: planc/cost/memory.py's `layer_program` with hd_split = m: layers.py's attention terms
with local widths over the head_dim slice, plus partial_scores (float32, all-reduced in place)
and probs; what this block allocates beyond them is listed there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.distributed as dist
from torch import Tensor, nn

from planc.backends.torch.runtime.headdim_attention import headdim_attention, rope_slice
from planc.backends.torch.runtime.layers import (
    RMSNorm,
    Rope,
    all_reduce,
    attention_weights,
    load_norm,
    load_qk_norm,
    rotate_qk,
)
from planc.layout.headdim import headdim_rows, headdim_slice_indices

if TYPE_CHECKING:
    from planc.backends.torch.runtime.dist import RankContext
    from planc.backends.torch.weights import ShardReader


class HeadDimAttention(nn.Module):
    """Pre-norm attention on this rank's heads and head_dim slice, summed over the grid."""

    def __init__(
        self,
        norm: RMSNorm,
        wqkv: nn.Module,
        wo: nn.Module,
        dims: tuple[int, int, int],
        split: tuple[int, int],
        causal: bool,
        dim_group: dist.ProcessGroup | None,
        out_group: dist.ProcessGroup | None,
        qk_norm: nn.ModuleList | None = None,
    ) -> None:
        super().__init__()
        self.norm, self.wqkv, self.wo = norm, wqkv, wo
        self.heads, self.kv_heads, self.head_dim = dims  # local heads, full head_dim
        self.m, self.j = split  # head_dim slices and this rank's slice
        self.causal, self.dim_group, self.out_group = causal, dim_group, out_group
        self.qk_norm = qk_norm  # over the whole head: sums of squares all-reduced over m

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        b, s, _ = x.shape
        h, kv, dl = self.heads, self.kv_heads, self.head_dim // self.m
        qkv = self.wqkv(self.norm(x)).view(b, s, h + 2 * kv, dl)
        q, k, v = qkv.split((h, kv, kv), dim=2)
        local = Rope(*rope_slice(rope.cos, rope.sin, self.head_dim, self.m, self.j))
        q, k = rotate_qk(q, k, local, self.qk_norm)
        o = headdim_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            self.dim_group,
            causal=self.causal,
            scale=self.head_dim**-0.5,
        )
        del qkv, q, k, v
        o_in = o.transpose(1, 2).reshape(b, s, h * dl)
        del o
        out = self.wo(o_in)
        del o_in
        return all_reduce(out, self.out_group)


def make_attention(ctx: RankContext, reader: ShardReader, layer: int) -> HeadDimAttention:
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
    return HeadDimAttention(
        load_norm(ctx, reader, f"layers.{layer}.input_layernorm.weight"),
        wqkv,
        wo,
        (len(lay.q_heads), len(lay.kv_heads), d),
        (parts, j),
        cfg.causal,
        dim_group,
        out_group,
        qk_norm,
    )
