"""Sequence-parallel attention core (seed 002: `shard seq over sp attention ring|gather`).

The residual stream is sequence-sharded: a rank holds x [rows, s_local, hidden] at the global
positions layout.seq_positions gives it (zig-zag: chunks i and 2R-1-i of 2R, the same tokens as
ring_attention.positions_for_rank), and program.run builds its RoPE tables from those global
positions. Everything outside attention is token-local: the norms, q/k/v and o projections and
the whole MLP (cores.make_mlp, dense or MoE) run on the local tokens with no communication.
Only K/V cross the sequence group, round the ring (ring_attention) or all-gathered
(gather_attention). Heads may be split as well (`heads over tp` beside `seq over sp`): q/k/v are
then column-parallel over the local heads and o row-parallel with one all_reduce over the heads
group, as in layers.Attention.

Memory: planc/cost/memory.py's `ring_terms` (ring_kv, ring_recv,
ring_block0_out, ring_block_kv_repeat, ring_acc_out / ring_acc_lse, ring_block_out /
ring_block_lse) or `gather_terms` (gathered_kv, gather_mask, gather_bias), besides layers.py's
attention terms; what this block allocates beyond them is listed there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.distributed as dist
from torch import Tensor

from planc.backends.torch.runtime import layers
from planc.backends.torch.runtime.decode_attention import flash_decode
from planc.backends.torch.runtime.layers import Attention, LocalCore
from planc.backends.torch.runtime.ring_attention import gather_attention, ring_attention

if TYPE_CHECKING:
    from planc.backends.torch.runtime.dist import RankContext
    from planc.backends.torch.weights import ShardReader


class SeqCore(LocalCore):
    """Attention of the local tokens over the whole sequence: ring or gather for the prompt,
    flash-decoding over the sequence-sharded cache for a decode step."""

    def __init__(self, head_dim: int, causal: bool, kind: str, zigzag: bool,
                 seq_group: dist.ProcessGroup | None) -> None:
        super().__init__(head_dim, causal)
        if kind not in ("ring", "gather"):
            raise ValueError(f"sequence-parallel attention is 'ring' or 'gather', not {kind!r}")
        self.kind, self.zigzag, self.seq_group = kind, zigzag, seq_group

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [b, heads, s_local, d], k/v [b, kv_heads, s_local, d] -> [b, heads, s_local, d]."""
        if self.seq_group is None:  # the seq axes have size 1: the local tokens are all tokens
            return super().attend(q, k, v)
        attention = ring_attention if self.kind == "ring" else gather_attention
        return attention(q, k, v, self.seq_group, causal=self.causal, zigzag=self.zigzag,
                         scale=self.scale)  # fmt: skip

    def step(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        if self.seq_group is None:
            return super().step(q, k, v, mask)
        return flash_decode(q, k, v, self.seq_group, self.scale, mask)


def make_attention(ctx: RankContext, reader: ShardReader, layer: int) -> Attention:
    """Layer `layer`'s attention for splits["seq"] with cfg.attention ring or gather."""
    cfg = ctx.cfg
    core = SeqCore(cfg.model.head_dim, cfg.causal, cfg.attention, cfg.zigzag, ctx.dim_group("seq"))
    return layers.make_attention(ctx, reader, layer, core)
