"""Sequence-parallel attention block (seed 002: `shard seq over sp attention ring|gather`).

The residual stream is sequence-sharded: a rank holds x [rows, s_local, hidden] at the global
positions layout.seq_positions gives it (zig-zag: chunks i and 2R-1-i of 2R, the same tokens as
ring_attention.positions_for_rank), and program.run builds its RoPE tables from those global
positions. Everything outside attention is token-local: the norms, q/k/v and o projections and
the whole MLP (cores.make_mlp, dense or MoE) run on the local tokens with no communication.
Only K/V cross the sequence group, round the ring (ring_attention) or all-gathered
(gather_attention). Heads may be split as well (`heads over tp` beside `seq over sp`): q/k/v are
then column-parallel over the local heads and o row-parallel with one all_reduce over the heads
group, as in layers.Attention.

Memory: planc/cost/memory.py's `layer_program` for attention ring (ring_kv, ring_recv,
ring_block0_out, ring_block_kv_repeat, ring_acc_out / ring_acc_lse, ring_block_out /
ring_block_lse) or gather (gathered_kv, gather_mask, gather_bias), besides layers.py's
attention terms; what this block allocates beyond them is listed there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from planc.backends.torch.runtime.layers import (
    RMSNorm,
    Rope,
    all_reduce,
    attention_weights,
    load_norm,
    load_qk_norm,
    rotate_qk,
)
from planc.backends.torch.runtime.ring_attention import gather_attention, ring_attention

if TYPE_CHECKING:
    from planc.backends.torch.runtime.dist import RankContext
    from planc.backends.torch.weights import ShardReader


class SeqParallelAttention(nn.Module):
    """Pre-norm attention of the local tokens over the whole sequence (ring or gather)."""

    def __init__(
        self,
        norm: RMSNorm,
        wqkv: nn.Module,
        wo: nn.Module,
        dims: tuple[int, int, int],
        kind: str,
        causal: bool,
        zigzag: bool,
        seq_group: dist.ProcessGroup | None,
        head_group: dist.ProcessGroup | None,
        qk_norm: nn.ModuleList | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("ring", "gather"):
            raise ValueError(f"sequence-parallel attention is 'ring' or 'gather', not {kind!r}")
        self.norm, self.wqkv, self.wo = norm, wqkv, wo
        self.heads, self.kv_heads, self.head_dim = dims
        self.kind, self.causal, self.zigzag = kind, causal, zigzag
        self.seq_group, self.head_group, self.qk_norm = seq_group, head_group, qk_norm

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [b, heads, s_local, d], k/v [b, kv_heads, s_local, d] -> [b, heads, s_local, d]."""
        scale = self.head_dim**-0.5
        if self.seq_group is None:  # the seq axes have size 1: the local tokens are all tokens
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=self.causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
            )
        if self.kind == "ring":
            return ring_attention(
                q, k, v, self.seq_group, causal=self.causal, zigzag=self.zigzag, scale=scale
            )
        return gather_attention(
            q, k, v, self.seq_group, causal=self.causal, zigzag=self.zigzag, scale=scale
        )

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        b, s, _ = x.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        qkv = self.wqkv(self.norm(x)).view(b, s, h + 2 * kv, d)
        q, k, v = qkv.split((h, kv, kv), dim=2)
        q, k = rotate_qk(q, k, rope, self.qk_norm)  # rope: this rank's global positions
        o = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        del qkv, q, k, v
        o_in = o.transpose(1, 2).reshape(b, s, h * d)
        del o
        out = self.wo(o_in)
        del o_in
        return all_reduce(out, self.head_group)


def make_attention(ctx: RankContext, reader: ShardReader, layer: int) -> SeqParallelAttention:
    """Layer `layer`'s attention for splits["seq"] with cfg.attention ring or gather."""
    cfg, lay = ctx.cfg, ctx.layout
    wqkv, wo = attention_weights(ctx, reader, layer)
    return SeqParallelAttention(
        load_norm(ctx, reader, f"layers.{layer}.input_layernorm.weight"),
        wqkv,
        wo,
        (len(lay.q_heads), len(lay.kv_heads), cfg.model.head_dim),
        cfg.attention,
        cfg.causal,
        cfg.zigzag,
        ctx.dim_group("seq"),
        ctx.dim_group("heads"),
        load_qk_norm(ctx, reader, layer),
    )
