"""Attention with a KV cache: the prefill of a prompt and one-token decode steps, for every
attention block the prefill runtime builds (layers.Attention over tensor-parallel heads,
headdim_block.HeadDimAttention over heads x head_dim, seq_attention.SeqParallelAttention over
a sequence group, ring or gather).

`CachedAttention` wraps one of those blocks and reuses its weights (norm, fused q/k/v, o) and
process groups; only what happens between the projections changes:
  prefill (step 0): the block's own attention of the prompt (causal SDPA / head_dim partial
           scores / ring or gather), and the prompt's K/V (after RoPE) written to the cache;
  decode step: the new token's K/V written to its slot (planc/layout/schedule.step_slots; with a
           sequence split only the owner writes), then attention of the new query over the
           filled slots, which are all visible (no mask):
    heads:    SDPA over the local kv heads' cache;
    head_dim: headdim_attention over the cached slice (partial scores all-reduced over m);
    seq:      flash-decoding: each rank's (out, log-sum-exp) over its own slots, one
              all_gather of [rows, heads, 1, head_dim + 1] float32 over the sequence group,
              merged by `lse_merge`; every rank ends with the same output.
Then o_proj and the block's all_reduce, as in prefill.

Memory of a decode step, T = rows tokens (one per sequence of the microbatch), widths as in
layers.py: norm out [T, hidden]*e -> qkv [T, Q + 2K]*e (norm out freed) -> RoPE temporaries
[T, Q/2]*e -> K/V copied into the cache (no new buffer) -> attention over n filled slots: SDPA's
out [T, Q]*e (CPU / CUDA kernels read the strided cache views in place); head_dim: float32
scores [b, heads, 1, n]*4 and out; seq: float32 out [T, Q]*4, lse, the stacked [T, Q + heads]*4
message and the gathered sp x [T, Q + heads]*4 -> merged out [T, Q]*4 -> o_proj out
[T, hidden]*e -> all_reduce in place.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from planc.backends.torch.runtime.headdim_attention import headdim_attention, rope_slice
from planc.backends.torch.runtime.headdim_block import HeadDimAttention
from planc.backends.torch.runtime.layers import Attention, Rope, all_reduce, rotate_qk
from planc.backends.torch.runtime.ring_attention import attention_with_lse
from planc.backends.torch.runtime.seq_attention import SeqParallelAttention
from planc.layout.schedule import Slots


def lse_merge(outs: Tensor, lses: Tensor) -> Tensor:
    """Merge partial attention outputs over disjoint key sets (flash-decoding).

    outs [R, ..., d] and lses [R, ...] (natural-log sum of exp of the scaled scores of each
    part's keys) in float32 -> softmax over the union of the keys times V, [..., d]:
    sum_r exp(lse_r - L) out_r with L = log sum_r exp(lse_r). A part with no keys (lse -inf)
    weighs nothing.
    """
    top = lses.amax(dim=0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(lses - top)  # [R, ...], the largest part's weight is 1
    num = (outs * w.unsqueeze(-1)).sum(dim=0)
    return num / w.sum(dim=0).unsqueeze(-1)


def block_kind(attn: nn.Module) -> str:
    # Matched by what the block is, not by the RunConfig flags that chose it.
    if isinstance(attn, HeadDimAttention):
        return "head_dim"
    if isinstance(attn, SeqParallelAttention):
        return "seq"
    if isinstance(attn, Attention):
        return "heads"
    raise NotImplementedError(
        f"decode has no KV-cache attention for {type(attn).__name__}; supported: tensor "
        "parallel heads, heads x head_dim, ring / gather sequence parallel"
    )


class CachedAttention(nn.Module):
    """One layer's attention block with a KV cache (see the module docstring). The wrapped
    block is not a child: it stays in its decoder layer, so its weights are counted once."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.kind = block_kind(attn)
        self.block: list[nn.Module] = [attn]  # a list: not registered as a submodule
        blk = cast(Any, attn)
        self.norm, self.wqkv, self.wo, self.qk_norm = blk.norm, blk.wqkv, blk.wo, blk.qk_norm
        self.heads: int = blk.heads
        self.kv_heads: int = blk.kv_heads
        self.head_dim: int = blk.head_dim  # the whole head's
        # head_dim slices per head, and this rank's slice
        self.slices: int = blk.m if self.kind == "head_dim" else 1
        self.slice_index: int = blk.j if self.kind == "head_dim" else 0
        self.dim_group: dist.ProcessGroup | None = None  # head_dim slices
        self.seq_group: dist.ProcessGroup | None = None
        if self.kind == "heads":
            self.out_group: dist.ProcessGroup | None = blk.group
        elif self.kind == "seq":
            self.out_group, self.seq_group = blk.head_group, blk.seq_group
        else:
            self.out_group, self.dim_group = blk.out_group, blk.dim_group

    @property
    def cache_dims(self) -> tuple[int, int]:
        """(kv heads, head_dim) of this rank's cache."""
        return self.kv_heads, self.head_dim // self.slices

    def forward(
        self,
        x: Tensor,
        rope: Rope,
        cache: tuple[Tensor, Tensor],
        slots: Slots,
        prefill: bool,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x [b, s, hidden] (s: the prompt's local tokens or 1); cache: this microbatch's rows
        of the layer's (k, v), [b, kv_heads, capacity, d]; mask: which filled slots a decode
        step sees, [b, 1, 1, slots.valid] bool (None: all; prompts of different lengths leave
        padding between a short prompt and the generated tokens)."""
        b, s, _ = x.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim // self.slices
        qkv = self.wqkv(self.norm(x)).view(b, s, h + 2 * kv, d)
        q, k, v = qkv.split((h, kv, kv), dim=2)
        if self.kind == "head_dim":
            rope = Rope(*rope_slice(rope.cos, rope.sin, self.head_dim, self.slices,
                                    self.slice_index))  # fmt: skip
        q, k = rotate_qk(q, k, rope, self.qk_norm)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        k_cache, v_cache = cache
        if slots.write is not None:
            lo, hi = slots.write
            k_cache[:, :, lo:hi].copy_(k)
            v_cache[:, :, lo:hi].copy_(v)
        if prefill:
            o = self._prefill(q, k, v)
        else:
            o = self._step(q, k_cache[:, :, : slots.valid], v_cache[:, :, : slots.valid], mask)
        del qkv, q, k, v
        out = self.wo(o.transpose(1, 2).reshape(b, s, h * d))
        del o
        return all_reduce(out, self.out_group)

    def _prefill(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The wrapped block's own attention of the prompt (causal)."""
        scale = self.head_dim**-0.5
        if self.kind == "head_dim":
            return headdim_attention(q, k, v, self.dim_group, causal=True, scale=scale)
        if self.kind == "seq":
            return cast(SeqParallelAttention, self.block[0]).attend(q, k, v)
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )

    def _step(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """q [b, heads, 1, d] over every filled slot k, v [b, kv_heads, n, d] (where mask)."""
        scale = self.head_dim**-0.5
        if self.kind == "head_dim":
            return headdim_attention(q, k, v, self.dim_group, causal=False, scale=scale,
                                     keys=mask)
        if self.seq_group is not None:
            return flash_decode(q, k, v, self.seq_group, scale, mask)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )


def masked_attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, keys: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """(out float32 [b, h, 1, d], lse [b, h, 1]) of q over the slots `keys` [b, 1, 1, n] lets
    each row see. A row that sees none of this rank's slots gets out 0 and lse -inf, which
    lse_merge weighs 0."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2) * scale).masked_fill(~keys, float("-inf"))
    lse = scores.logsumexp(dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num_(0.0)  # -inf - -inf: no slot
    return probs @ v.float(), lse


def flash_decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    group: dist.ProcessGroup,
    scale: float,
    keys: Tensor | None = None,
) -> Tensor:
    """Attention of q over the union of every group rank's k / v (the sequence-sharded cache),
    over the slots `keys` lets each row see (all when None): local (out, lse), one all_gather
    of both in one float32 message, lse_merge."""
    if keys is None:
        out, lse = attention_with_lse(q, k, v, causal=False, scale=scale)
    else:
        out, lse = masked_attention_with_lse(q, k, v, keys, scale)
    d = out.shape[-1]
    msg = torch.cat((out, lse.unsqueeze(-1)), dim=-1)  # [b, heads, sq, d + 1]
    del out, lse
    world = dist.get_world_size(group)
    # Concatenated along dim 0 (the shape gloo's all_gather_into_tensor takes), viewed per rank.
    gathered = msg.new_empty((world * msg.shape[0], *msg.shape[1:]))
    dist.all_gather_into_tensor(gathered, msg, group=group)
    del msg
    gathered = gathered.view(world, -1, *gathered.shape[1:])
    return lse_merge(gathered[..., :d], gathered[..., d]).to(q.dtype)
