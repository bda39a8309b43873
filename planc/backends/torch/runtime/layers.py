"""Sharded Llama decoder layer, Megatron style (gpt-fast's tp.py is the model).

Attention block: RMSNorm, q/k/v column-parallel over splits["heads"] (one fused GEMM), RoPE, SDPA,
o row-parallel, one all_reduce. MLP block: RMSNorm, gate/up column-parallel over splits["ffn"]
(one fused GEMM), SiLU * up, down row-parallel, one all_reduce. Each block returns its fully
reduced output and the layer adds it to the residual stream in place.

Memory, for a microbatch of T = rows * local seq tokens, element size e, local widths
Q = q_heads * head_dim, K = kv_heads * head_dim, F = local ffn (what a forward allocates beyond
the residual stream x [T, hidden], which the stage owns and updates in place):
  attention: norm out [T, hidden] -> qkv [T, Q + 2K] (norm out freed) -> RoPE in place on the q
             and k views of qkv, one [T, Q/2] (then [T, K/2]) temporary -> SDPA out [T, Q] (+ its
             float32 log-sum-exp) -> qkv freed -> o_proj out [T, hidden] -> SDPA out freed ->
             all_reduce in place -> added to x, freed.
  MLP:       norm out [T, hidden] -> gate_up [T, 2F] (norm out freed) -> SiLU and * up in place
             -> down out [T, hidden] -> gate_up freed -> all_reduce in place -> added, freed.

Other strategies are cores picked in runtime/cores.py: ring / gather attention
(runtime/seq_attention.py over ring_attention.py), head x head_dim attention
(runtime/headdim_block.py over headdim_attention.py) and MoE experts (runtime/moe_block.py over
moe.py); int8 / 2:4 linears come from `make_linear` below (runtime/compress.py). Each core
exposes `make_attention(ctx, reader, layer)` or `make_mlp(ctx, reader, layer)`; their
docstrings list the buffers they allocate per microbatch, as above. An attention block maps
the residual stream x [b, s, hidden] and the Rope tables of the local positions to its reduced
output; an MLP block maps x to its reduced output; both apply their own input RMSNorm
(`load_norm`), so the normalised copy of x is freed as soon as the first GEMM has read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from planc.backends.torch.runtime import compress

if TYPE_CHECKING:
    from planc.backends.torch.runtime.dist import RankContext
    from planc.backends.torch.weights import ShardReader

LinearRole = Literal["attn", "mlp"]


def all_reduce(x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    if group is not None:
        dist.all_reduce(x, group=group)
    return x


class Linear(nn.Module):
    """y = x @ W.T for a (local shard of a) bias-free weight [out, in]."""

    weight: Tensor

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class RMSNorm(nn.Module):
    """Hugging Face's LlamaRMSNorm: normalise in float32, cast back, then scale."""

    weight: Tensor

    def __init__(self, weight: Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # rms_norm computes in float32 and rounds once to x's dtype, as HF does before scaling.
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps).mul_(self.weight)


@dataclass(frozen=True)
class Rope:
    """cos / sin of half the head dim, [seq_local, 1, head_dim // 2], for the local positions."""

    cos: Tensor
    sin: Tensor


def rope_tables(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> Rope:
    # Same arithmetic as HF's default RoPE: float32 angles, cast to the run dtype at the end.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]
    return Rope(freqs.cos().to(dtype)[:, None, :], freqs.sin().to(dtype)[:, None, :])


def apply_rope_(x: Tensor, rope: Rope) -> None:
    """Rotate-half RoPE (HF's convention) in place on x [b, s, h, d], which may be a view."""
    x1, x2 = x.chunk(2, dim=-1)
    x2_sin = x2 * rope.sin  # the only temporary: half of x
    x2.mul_(rope.cos).addcmul_(x1, rope.sin)  # x2 cos + x1 sin
    x1.mul_(rope.cos).sub_(x2_sin)  # x1 cos - x2 sin


class Attention(nn.Module):
    """Pre-norm grouped-query attention on the local heads, all-reduced over the head group."""

    def __init__(
        self,
        norm: RMSNorm,
        wqkv: nn.Module,
        wo: nn.Module,
        heads: int,
        kv_heads: int,
        head_dim: int,
        causal: bool,
        group: dist.ProcessGroup | None,
    ) -> None:
        super().__init__()
        self.norm, self.wqkv, self.wo = norm, wqkv, wo
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.causal, self.group = causal, group

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        b, s, _ = x.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        qkv = self.wqkv(self.norm(x)).view(b, s, h + 2 * kv, d)
        q, k, v = qkv.split((h, kv, kv), dim=2)
        apply_rope_(q, rope)
        apply_rope_(k, rope)
        # [b, s, heads, d] views -> [b, heads, s, d]: strided, last dim contiguous, no copies.
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=self.causal,
            scale=d**-0.5,
            enable_gqa=h != kv,
        )
        del qkv, q, k, v
        out = self.wo(o.transpose(1, 2).reshape(b, s, h * d))
        del o
        return all_reduce(out, self.group)


class GatedMLP(nn.Module):
    """Pre-norm down(silu(gate(x)) * up(x)) on the local ffn columns, all-reduced."""

    def __init__(self, norm: RMSNorm, w_gate_up: nn.Module, w_down: nn.Module, group: Any) -> None:
        super().__init__()
        self.norm, self.gate_up, self.down, self.group = norm, w_gate_up, w_down, group

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(self.norm(x)).chunk(2, dim=-1)
        # In place on the fused GEMM output: the MLP's only [T, 2 * ffn_local] buffer.
        out = self.down(F.silu(gate, inplace=True).mul_(up))
        del gate, up
        return all_reduce(out, self.group)


class DecoderLayer(nn.Module):
    """x += attn(x); x += mlp(x), on the stage's residual stream x (updated in place)."""

    def __init__(self, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.attn, self.mlp = attn, mlp

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        x.add_(self.attn(x, rope))
        x.add_(self.mlp(x))
        return x


def make_linear(
    ctx: RankContext,
    weight: Tensor,
    role: LinearRole,
    input_group: dist.ProcessGroup | None = None,
) -> nn.Module:
    """The linear for a local weight [out, in]. input_group: the group over which the weight's
    input dimension is split (row-parallel o_proj / down), so that int8 scales are those of the
    whole row; every rank of it must make the same linears in the same order (collective)."""
    cfg = ctx.cfg
    if cfg.compress_int8 or (cfg.compress_mlp_2_4 and role == "mlp"):
        return compress.make_linear(ctx, weight, role, input_group)
    return Linear(weight)


def attention_weights(
    ctx: RankContext, reader: ShardReader, layer: int
) -> tuple[nn.Module, nn.Module]:
    """This rank's fused q/k/v linear (column-parallel over its heads) and o linear
    (row-parallel over the heads group)."""
    lay, m = ctx.layout, ctx.cfg.model
    p, d = f"layers.{layer}.self_attn.", m.head_dim
    rows_q = range(lay.q_heads.start * d, lay.q_heads.stop * d)
    rows_kv = range(lay.kv_heads.start * d, lay.kv_heads.stop * d)
    wqkv = torch.cat(
        [
            reader.rows(p + "q_proj.weight", rows_q, (m.heads * d, m.hidden)),
            reader.rows(p + "k_proj.weight", rows_kv, (m.kv_heads * d, m.hidden)),
            reader.rows(p + "v_proj.weight", rows_kv, (m.kv_heads * d, m.hidden)),
        ]
    )
    wo = reader.cols(p + "o_proj.weight", rows_q, (m.hidden, m.heads * d))
    return (
        make_linear(ctx, reader.place(wqkv), "attn"),
        make_linear(ctx, reader.place(wo), "attn", ctx.dim_group("heads")),
    )


def load_norm(ctx: RankContext, reader: ShardReader, name: str) -> RMSNorm:
    m = ctx.cfg.model
    return RMSNorm(reader.place(reader.full(name, (m.hidden,))), m.rms_eps)


def make_attention(ctx: RankContext, reader: ShardReader, layer: int) -> Attention:
    """Layer `layer`'s attention over the rank's heads (the "heads" core, runtime/cores.py)."""
    lay, m = ctx.layout, ctx.cfg.model
    wqkv, wo = attention_weights(ctx, reader, layer)
    return Attention(
        load_norm(ctx, reader, f"layers.{layer}.input_layernorm.weight"),
        wqkv,
        wo,
        len(lay.q_heads),
        len(lay.kv_heads),
        m.head_dim,
        ctx.cfg.causal,
        ctx.dim_group("heads"),
    )


def make_mlp(ctx: RankContext, reader: ShardReader, layer: int) -> GatedMLP:
    """Layer `layer`'s dense MLP over the rank's ffn columns (runtime/cores.py)."""
    m, cols = ctx.cfg.model, ctx.layout.ffn_cols
    p = f"layers.{layer}.mlp."
    gate_up = torch.cat(
        [
            reader.rows(p + "gate_proj.weight", cols, (m.ffn, m.hidden)),
            reader.rows(p + "up_proj.weight", cols, (m.ffn, m.hidden)),
        ]
    )
    down = reader.cols(p + "down_proj.weight", cols, (m.hidden, m.ffn))
    return GatedMLP(
        load_norm(ctx, reader, f"layers.{layer}.post_attention_layernorm.weight"),
        make_linear(ctx, reader.place(gate_up), "mlp"),
        make_linear(ctx, reader.place(down), "mlp", ctx.dim_group("ffn")),
        ctx.dim_group("ffn"),
    )
