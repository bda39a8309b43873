"""Sharded Llama decoder layer, Megatron style (gpt-fast's tp.py is the model).

Attention: q/k/v column-parallel over splits["heads"] (one fused GEMM), RoPE, SDPA, o row-parallel,
one all_reduce. MLP: gate/up column-parallel over splits["ffn"] (one fused GEMM), SiLU * up,
down row-parallel, one all_reduce. Every module computes in the run dtype and frees its
intermediates on return, so a layer's transient memory is a few [batch, seq, width] buffers.

Other strategies plug in through the three `make_*` functions: they pick ring / gather / head_dim
attention (runtime/ring_attention.py, runtime/headdim_attention.py), MoE experts
(runtime/moe.py) and int8 / 2:4 linears (runtime/compress.py) from the RunConfig. Each such module
exposes `make_attention(ctx, reader, layer)`, `make_mlp(ctx, reader, layer)` or
`make_linear(ctx, weight, role)` with the signatures below; their modules return the fully
reduced [batch, seq, hidden] output, so the decoder layer does not care which one it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

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

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class RMSNorm(nn.Module):
    """Hugging Face's LlamaRMSNorm: normalise in float32, cast back, then scale."""

    def __init__(self, weight: Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * y.to(x.dtype)


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


def apply_rope(x: Tensor, rope: Rope) -> Tensor:
    """Rotate-half RoPE on x [b, s, h, d] into one new tensor (HF's rotate_half convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, rope.cos, out=o1)
    o1.sub_(x2 * rope.sin)
    torch.mul(x2, rope.cos, out=o2)
    o2.add_(x1 * rope.sin)
    return out


class Attention(nn.Module):
    """Local heads of grouped-query attention; the output is all-reduced over the head group."""

    def __init__(
        self,
        wqkv: nn.Module,
        wo: nn.Module,
        heads: int,
        kv_heads: int,
        head_dim: int,
        causal: bool,
        group: dist.ProcessGroup | None,
    ) -> None:
        super().__init__()
        self.wqkv, self.wo = wqkv, wo
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.causal, self.group = causal, group

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        b, s, _ = x.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        q, k, v = self.wqkv(x).split((h * d, kv * d, kv * d), dim=-1)
        q = apply_rope(q.view(b, s, h, d), rope).transpose(1, 2)
        k = apply_rope(k.view(b, s, kv, d), rope).transpose(1, 2)
        v = v.view(b, s, kv, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, scale=d**-0.5, enable_gqa=h != kv
        )
        del q, k, v
        out = self.wo(o.transpose(1, 2).reshape(b, s, h * d))
        return all_reduce(out, self.group)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) on the local ffn columns, all-reduced over the ffn group."""

    def __init__(self, w_gate_up: nn.Module, w_down: nn.Module, group: Any) -> None:
        super().__init__()
        self.gate_up, self.down, self.group = w_gate_up, w_down, group

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        # In place on the fused GEMM output: the MLP's only [b, s, 2*ffn_local] buffer.
        act = F.silu(gate, inplace=True).mul_(up)
        return all_reduce(self.down(act), self.group)


class DecoderLayer(nn.Module):
    def __init__(self, attn: nn.Module, mlp: nn.Module, attn_norm: RMSNorm, mlp_norm: RMSNorm):
        super().__init__()
        self.attn, self.mlp = attn, mlp
        self.attn_norm, self.mlp_norm = attn_norm, mlp_norm

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        h = x + self.attn(self.attn_norm(x), rope)
        h += self.mlp(self.mlp_norm(h))
        return h


# Choosers: the only place that maps RunConfig flags to implementations. ------------------------


def _plugin(module: str, func: str, why: str) -> Any:
    try:
        mod = importlib.import_module(f"planc.backends.torch.runtime.{module}")
        return getattr(mod, func)
    except (ImportError, AttributeError) as e:
        raise NotImplementedError(
            f"{why} needs {func}() from planc/backends/torch/runtime/{module}.py ({e})"
        ) from e


def attention_kind(ctx: RankContext) -> str:
    if "head_dim" in ctx.cfg.splits:
        return "head_dim"
    if "seq" in ctx.cfg.splits and ctx.cfg.attention != "local":
        return ctx.cfg.attention
    if "seq" in ctx.cfg.splits:
        return "seq_without_attention"
    return "heads"


def make_linear(ctx: RankContext, weight: Tensor, role: LinearRole) -> nn.Module:
    cfg = ctx.cfg
    if cfg.compress_int8 or (cfg.compress_mlp_2_4 and role == "mlp"):
        return _plugin("compress", "make_linear", "int8 / 2:4 compression")(ctx, weight, role)
    return Linear(weight)


def make_attention(ctx: RankContext, reader: ShardReader, layer: int) -> nn.Module:
    kind = attention_kind(ctx)
    if kind == "head_dim":
        return _plugin("headdim_attention", "make_attention", "splits['head_dim']")(
            ctx, reader, layer
        )
    if kind in ("ring", "gather"):
        return _plugin("ring_attention", "make_attention", f"{kind} attention")(ctx, reader, layer)
    if kind == "seq_without_attention":
        raise ValueError("splits['seq'] needs attention 'ring' or 'gather', not 'local'")
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
    return Attention(
        make_linear(ctx, reader.place(wqkv), "attn"),
        make_linear(ctx, reader.place(wo), "attn"),
        len(lay.q_heads),
        len(lay.kv_heads),
        d,
        ctx.cfg.causal,
        ctx.dim_group("heads"),
    )


def make_mlp(ctx: RankContext, reader: ShardReader, layer: int) -> nn.Module:
    if ctx.cfg.model.arch == "mixtral" or "experts" in ctx.cfg.splits:
        return _plugin("moe", "make_mlp", "a mixture-of-experts MLP")(ctx, reader, layer)
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
        make_linear(ctx, reader.place(gate_up), "mlp"),
        make_linear(ctx, reader.place(down), "mlp"),
        ctx.dim_group("ffn"),
    )


def make_layer(ctx: RankContext, reader: ShardReader, layer: int) -> DecoderLayer:
    m, p = ctx.cfg.model, f"layers.{layer}."
    norm1 = reader.place(reader.full(p + "input_layernorm.weight", (m.hidden,)))
    norm2 = reader.place(reader.full(p + "post_attention_layernorm.weight", (m.hidden,)))
    return DecoderLayer(
        make_attention(ctx, reader, layer),
        make_mlp(ctx, reader, layer),
        RMSNorm(norm1, m.rms_eps),
        RMSNorm(norm2, m.rms_eps),
    )
