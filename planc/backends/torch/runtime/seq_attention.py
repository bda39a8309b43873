"""Sequence-parallel attention block (seed 002: `shard seq over sp attention ring|gather`).

The residual stream is sequence-sharded: a rank holds x [rows, s_local, hidden] at the global
positions layout.seq_positions gives it (zig-zag: chunks i and 2R-1-i of 2R, the same tokens as
ring_attention.positions_for_rank), and program.run builds its RoPE tables from those global
positions. Everything outside attention is token-local: the norms, q/k/v and o projections and
the whole MLP (layers.make_mlp, dense or MoE) run on the local tokens with no communication.
Only K/V cross the sequence group, round the ring (ring_attention) or all-gathered
(gather_attention). Heads may be split as well (`heads over tp` beside `seq over sp`): q/k/v are
then column-parallel over the local heads and o row-parallel with one all_reduce over the heads
group, as in layers.Attention.

Memory, for a microbatch of T = rows * s_local tokens, element size e, local widths
Q = q_heads * head_dim, K = kv_heads * head_dim, R ranks in the sequence group, in order:
  norm out [T, hidden]*e -> qkv [T, Q + 2K]*e (norm out freed) -> RoPE in place on the q and k
  views, one [T, Q/2]*e (then [T, K/2]*e) temporary -> attention (below) -> qkv freed ->
  o_proj input [T, Q]*e (the transpose-reshape copy of the attention output) -> attention
  output freed -> o_proj out [T, hidden]*e -> o_proj input freed -> all_reduce over the heads
  group in place -> added to x by the layer, freed.
  ring:   kv [2T, K]*e (k and v stacked: one message per step) and, while steps remain, a
          receive buffer of the same size: 2 x [2T, K]*e live (the spent block is freed when the
          received one takes its place). Per visible block (query rows r <= T, keys c <= T):
          the block kernel's out [r, Q] (float32; made in e and copied to float32 when e is
          16-bit) and lse [b, heads, r/b]*4; with grouped-query attention also k and v repeated
          to the query heads, 2 x [c, Q]*e. The first (own) block's out and lse become the
          accumulators [T, Q]*4 and [b, heads, s_local]*4; later blocks merge into them in place
          (merge_attention_: besides the block, only [b, heads, r/b]*4 vectors). At the end the
          accumulator is cast to e ([T, Q]*e; no copy in float32) and freed.
  gather: kv [T, 2K]*e, the gathered [R*T, 2K]*e (kv freed after the all_gather), the mask
          [s_local, R*s_local] bool; SDPA then takes keys and values as strided views of the
          gathered buffer and returns [T, Q]*e (its own workspace besides: on CPU the math or
          flash kernel, on CUDA a boolean mask is turned into an additive [s_local, R*s_local]*e
          bias and the memory-efficient kernel runs).
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
    apply_rope_,
    attention_weights,
    load_norm,
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
    ) -> None:
        super().__init__()
        if kind not in ("ring", "gather"):
            raise ValueError(f"sequence-parallel attention is 'ring' or 'gather', not {kind!r}")
        self.norm, self.wqkv, self.wo = norm, wqkv, wo
        self.heads, self.kv_heads, self.head_dim = dims
        self.kind, self.causal, self.zigzag = kind, causal, zigzag
        self.seq_group, self.head_group = seq_group, head_group

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
        apply_rope_(q, rope)  # rope holds the tables of this rank's global positions
        apply_rope_(k, rope)
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
    if cfg.zigzag and cfg.attention != "local":
        sp = lay.parts("seq")
        if sp > 1 and cfg.seq % (2 * sp):
            raise ValueError(f"zig-zag needs seq ({cfg.seq}) divisible by 2 x {sp} ranks")
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
    )
