"""Sharded Llama-style decoder layer, Megatron style (gpt-fast's tp.py is the model).

Attention block (`Attention`, one for every strategy): RMSNorm, q/k/v column-parallel over
splits["heads"] (one fused GEMM, plus the q/k/v bias rows of the local heads when the family
has one), the family's q/k RMSNorm over head_dim (Qwen3), RoPE (with the family's theta and
scaling, `inv_freq`), the strategy's core (`LocalCore`: SDPA), o row-parallel, one
all_reduce; with a KV cache (decode) it writes the new K/V and a decode step runs the core's
`step` over the filled slots. MLP block: RMSNorm, gate/up column-parallel over splits["ffn"]
(one fused GEMM), SiLU * up, down row-parallel, one all_reduce. Each block returns its fully
reduced output and the layer adds it to the residual stream in place.

Memory: the buffers a block allocates per microbatch are the attention and MLP terms of
planc/cost/memory.py's `layer_program` (attn_norm_out, qkv, rope_tmp_q/k, attn_out, attn_lse,
o_proj_out; mlp_norm_out, gate_up, mlp_out), allocated in its op order; the residual stream x
is the stage's and is updated in place. Change the op order here and it changes there.

Other strategies are cores picked in runtime/cores.py: ring / gather attention
(runtime/seq_attention.py's SeqCore over ring_attention.py, flash-decoding over
decode_attention.py), head x head_dim attention (runtime/headdim_block.py's HeadDimCore over
headdim_attention.py) and MoE experts (runtime/moe_block.py over moe.py); int8 / 2:4 linears
come from `make_linear` below (runtime/compress.py). Each core module exposes
`make_attention(ctx, reader, layer)` (an `Attention` with its core) or
`make_mlp(ctx, reader, layer)`; their docstrings name the `layer_program` terms they allocate,
as above. An attention block maps the residual stream x [b, s, hidden] and the Rope tables of
the local positions to its reduced output; an MLP block maps x to its reduced output; both
apply their own input RMSNorm (`load_norm`), so the normalised copy of x is freed as soon as
the first GEMM has read it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from planc.backends.torch.runtime import compress, decode_gemm
from planc.models.features import ModelFeatures

if TYPE_CHECKING:
    from planc.backends.torch.runtime.dist import RankContext
    from planc.backends.torch.weights import ShardReader
    from planc.layout.schedule import Slots

LinearRole = Literal["attn", "mlp"]


def all_reduce(x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    if group is not None:
        dist.all_reduce(x, group=group)
    return x


WEIGHT_LAYOUTS = ("out_major", "in_major")


def weight_layout(device: torch.device) -> str:
    """How a plain linear's weight [out, in] is stored on `device`: "in_major" (strides
    (1, out): F.linear multiplies x by a contiguous [in, out] matrix, cuBLAS's NN kernels) on
    CUDA, "out_major" (the checkpoint's own, contiguous [out, in]) elsewhere.

    Why in_major on a GPU: in a decode layer's graph (Llama-3-8B shapes, one H200) cuBLAS's
    kernels for that layout took 291 against 298 us per layer at 64 rows and 152.5 against
    154.7 at one row (benchmarks/results/h200_decode_overlap_run10.json). The CPU keeps the
    checkpoint's layout (its tests compare tokens with Hugging Face, which multiplies that one).
    PLANC_WEIGHT_LAYOUT=out_major|in_major forces one (measuring; tests of both paths);
    PLANC_DECODE_GEMM=timed keeps out_major (decode_gemm's streaming kernel reads a weight's
    rows, so it runs on that layout only)."""
    forced = os.environ.get("PLANC_WEIGHT_LAYOUT")
    if forced in WEIGHT_LAYOUTS:
        return forced
    if os.environ.get("PLANC_DECODE_GEMM", "") == "timed":
        return "out_major"
    return "in_major" if device.type == "cuda" else "out_major"


def laid_out(weight: Tensor) -> Tensor:
    """weight [out, in] in weight_layout(its device): the same values and shape, its strides
    (1, out) when in_major (a transposed copy made on the weight's device; the contiguous
    original is freed by the caller dropping it, so loading holds one weight twice for a
    moment, before program.load restarts the memory peaks the memory model predicts)."""
    if weight.dim() != 2 or weight_layout(weight.device) == "out_major":
        return weight
    return weight.t().contiguous().t()


def empty_weight(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised stack of weights [..., out, in], each stored as `laid_out` stores a 2-D
    one (in_major: the last two dims transposed in memory), to be filled in place."""
    if weight_layout(device) == "out_major":
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.empty(*shape[:-2], shape[-1], shape[-2], dtype=dtype, device=device).mT


class Linear(nn.Module):
    """y = x @ W.T for a (local shard of a) weight [out, in], stored as `laid_out` says."""

    weight: Tensor

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: Tensor) -> Tensor:
        return decode_gemm.linear(x, self.weight)  # F.linear but in the static decode step


class Biased(nn.Module):
    """linear(x) + bias: the q/k/v bias (Qwen2) on this rank's rows, after any linear kind
    (plain or compressed), so compression never touches it."""

    bias: Tensor

    def __init__(self, linear: nn.Module, bias: Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).add_(self.bias)


class RMSNorm(nn.Module):
    """Hugging Face's LlamaRMSNorm: normalise in float32, cast back, then scale."""

    weight: Tensor

    def __init__(self, weight: Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return _ops.norm(x, self.weight, self.eps)


class HeadNorm(nn.Module):
    """Hugging Face's Qwen3 q_norm / k_norm: RMSNorm over each head's head_dim, on x
    [b, s, heads, d] before RoPE. With `group` (a head x head_dim split) x holds this rank's d of
    the head's `head_dim` and the float32 sum of squares is all-reduced over the group, so every
    slice is scaled by the whole head's norm."""

    weight: Tensor

    def __init__(
        self, weight: Tensor, eps: float, head_dim: int, group: dist.ProcessGroup | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.eps, self.head_dim, self.group = eps, head_dim, group

    def forward(self, x: Tensor) -> Tensor:
        if self.group is None:
            return F.rms_norm(x, (x.shape[-1],), eps=self.eps).mul_(self.weight)
        x32 = x.float()
        sumsq = x32.square().sum(dim=-1, keepdim=True)
        dist.all_reduce(sumsq, group=self.group)
        x32.mul_(torch.rsqrt(sumsq.div_(self.head_dim).add_(self.eps)))
        return x32.to(x.dtype).mul_(self.weight)


@dataclass(frozen=True)
class Rope:
    """cos / sin of half the head dim, [seq_local, 1, head_dim // 2], for the local positions."""

    cos: Tensor
    sin: Tensor


def inv_freq(head_dim: int, features: ModelFeatures) -> Tensor:
    """RoPE's float32 angle per position of each pair [head_dim // 2], as Hugging Face computes
    it for the features' rope type: theta ** (-2i / head_dim), then for `llama3` the transform of
    transformers' _compute_llama3_parameters (long wavelengths divided by `factor`, short ones
    kept, a smooth blend between `low_freq_factor` and `high_freq_factor`)."""
    base = 1.0 / (
        features.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)
    )
    kind, p = features.rope_type, dict(features.rope_scaling)
    if kind == "default":
        return base
    # planc check refuses other types (resolve: E025, E078) before a rank starts
    assert kind == "llama3", kind
    factor = float(p["factor"])
    low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / base
    scaled = torch.where(wavelen > old / low, base / factor, base)
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) * ~(wavelen > old / low)
    return torch.where(medium, blended, scaled)


def rope_tables(
    positions: Tensor, head_dim: int, features: ModelFeatures, dtype: torch.dtype
) -> Rope:
    # Same arithmetic as HF's RoPE: float32 angles, cast to the run dtype at the end.
    freqs = positions.float()[:, None] * inv_freq(head_dim, features).to(positions.device)[None, :]
    return Rope(freqs.cos().to(dtype)[:, None, :], freqs.sin().to(dtype)[:, None, :])


def rotate_qk(q: Tensor, k: Tensor, rope: Rope, qk_norm: nn.ModuleList | None
              ) -> tuple[Tensor, Tensor]:
    """q, k [b, s, heads, d] after the family's q/k norm (new tensors; Qwen3) and RoPE (eagerly
    in place on q and k, which may be views of the fused q/k/v output)."""
    if qk_norm is not None:
        q, k = qk_norm[0](q), qk_norm[1](k)
    return _ops.rope(q, rope.cos, rope.sin), _ops.rope(k, rope.cos, rope.sin)


# --- the layer's elementwise math: eager torch ops, or torch.compile fusions of it --------------


def _norm_eager(x: Tensor, w: Tensor, eps: float) -> Tensor:
    # rms_norm computes in float32 and rounds once to x's dtype, as HF does before scaling.
    return F.rms_norm(x, (x.shape[-1],), eps=eps).mul_(w)


def _rope_eager(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE (HF's convention) in place on x [b, s, h, d], which may be a view."""
    x1, x2 = x.chunk(2, dim=-1)
    x2_sin = x2 * sin  # the only temporary: half of x
    x2.mul_(cos).addcmul_(x1, sin)  # x2 cos + x1 sin
    x1.mul_(cos).sub_(x2_sin)  # x1 cos - x2 sin
    return x


def _add_norm_eager(x: Tensor, delta: Tensor, w: Tensor, eps: float) -> Tensor:
    """x += delta (the residual stream, in place), then the next block's norm of it."""
    return _norm_eager(x.add_(delta), w, eps)


def _add_parts_norm_eager(x: Tensor, parts: Tensor, w: Tensor, eps: float) -> Tensor:
    """x += the sum of float32 partial products parts [S, *x.shape] rounded once to x's dtype
    (decode_products.split_product: the GEMM's output rounding), then the next norm of x."""
    return _add_norm_eager(x, parts.sum(0).to(x.dtype), w, eps)


def _add_parts_eager(x: Tensor, parts: Tensor) -> None:
    """x += the sum of float32 partial products parts [S, *x.shape] rounded once to x's dtype."""
    x.add_(parts.sum(0).to(x.dtype))


def _silu_mul_eager(gate_up: Tensor) -> Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    # In place on the fused GEMM output: the MLP's only [T, 2 * ffn_local] buffer.
    return F.silu(gate, inplace=True).mul_(up)


def _norm_fused(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return F.rms_norm(x, (x.shape[-1],), eps=eps) * w


def _rope_fused(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    # x2 cos + x1 sin as _rope_eager's addcmul_ rounds it: the product x1 sin is not rounded
    f = torch.float32
    y2 = ((x2 * cos).to(f) + x1.to(f) * sin.to(f)).to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, y2), dim=-1)


def _add_norm_fused(x: Tensor, delta: Tensor, w: Tensor, eps: float) -> Tensor:
    x.copy_(x + delta)  # compiled: the add, its store into x and the norm are one kernel
    return F.rms_norm(x, (x.shape[-1],), eps=eps) * w


def _add_parts_norm_fused(x: Tensor, parts: Tensor, w: Tensor, eps: float) -> Tensor:
    return _add_norm_fused(x, parts.sum(0).to(x.dtype), w, eps)


def _add_parts_fused(x: Tensor, parts: Tensor) -> None:
    x.copy_(x + parts.sum(0).to(x.dtype))


def _silu_mul_fused(gate_up: Tensor) -> Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@dataclass(frozen=True)
class Elementwise:
    """A layer's elementwise math (RMSNorm with its scale, RoPE, SiLU x up, and the residual
    add with the next norm, which the static decode step calls, its addend a tensor or the
    float32 partial products of a GEMM split over K, decode_products). EAGER is torch's
    ops, in place where they can be: what every phase runs and what planc/cost's buffers count.
    `compiled_elementwise()` is torch.compile of the same math, one fused kernel per call where eagerly it
    launches two (the norm), five (RoPE) or two (SiLU x up): it pays inside the static decode
    step's CUDA graph (decode_step.py), where a step is hundreds of small kernels and each
    costs a few microseconds whatever its size (benchmarks/results/h200_decode_*). The fused
    forms return new tensors: a decode step's are a few KB per row."""

    norm: Callable[[Tensor, Tensor, float], Tensor]
    rope: Callable[[Tensor, Tensor, Tensor], Tensor]
    silu_mul: Callable[[Tensor], Tensor]
    add_norm: Callable[[Tensor, Tensor, Tensor, float], Tensor]
    add_parts_norm: Callable[[Tensor, Tensor, Tensor, float], Tensor]
    add_parts: Callable[[Tensor, Tensor], None]  # a pipeline stage's last add: no norm after


_F = TypeVar("_F", bound=Callable[..., Any])

EAGER = Elementwise(_norm_eager, _rope_eager, _silu_mul_eager, _add_norm_eager,
                    _add_parts_norm_eager, _add_parts_eager)
_ops = EAGER


def compiled_elementwise() -> Elementwise:
    """torch.compile of the fused forms (compiled on their first call, per shape), rounding
    each intermediate to its dtype as the eager ops do (inductor's emulate_precision_casts):
    by default inductor keeps a fused kernel's intermediates in float32, so in bfloat16 the
    norm after a residual add read the unrounded sum, and a quarter of the norm's outputs
    differed from the eager ops' in the last bit (inductor on the CPU, tests/torch/
    test_elementwise.py, which now asks for the same bits)."""
    import torch._inductor.config as inductor_config

    exact: dict[str, str | int | bool | Callable[..., Any]] = {}  # torch.compile's options
    if hasattr(inductor_config, "emulate_precision_casts"):
        exact["emulate_precision_casts"] = True

    def c(f: _F) -> _F:  # the compiled function takes and returns what f does
        return cast(_F, torch.compile(f, dynamic=False, fullgraph=True, options=exact or None))

    return Elementwise(c(_norm_fused), c(_rope_fused), c(_silu_mul_fused), c(_add_norm_fused),
                       c(_add_parts_norm_fused), c(_add_parts_fused))


@contextmanager
def elementwise(ops: Elementwise) -> Iterator[None]:
    """Run the layers with `ops` as their elementwise math (decode_step.py, while it records)."""
    global _ops
    prev, _ops = _ops, ops
    try:
        yield
    finally:
        _ops = prev


class LocalCore:
    """The attention core of whole heads on this rank (the "heads" core): SDPA over the local
    heads, causal for the prompt, over the cache's filled slots for a decode step. Other cores
    (headdim_block.HeadDimCore, seq_attention.SeqCore) change these methods."""

    slices = 1  # head_dim slices per head: this rank holds head_dim // slices of each

    def __init__(self, head_dim: int, causal: bool) -> None:
        self.head_dim, self.causal = head_dim, causal  # the whole head's head_dim
        self.scale = head_dim**-0.5

    def rope(self, rope: Rope) -> Rope:
        """The RoPE tables of this rank's head_dim columns."""
        return rope

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [b, heads, s, d], k / v [b, kv_heads, s, d] of the same tokens -> [b, heads, s, d]."""
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, scale=self.scale, enable_gqa=q.shape[1] != k.shape[1]
        )

    def step(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """q [b, heads, 1, d] over the filled cache slots k / v [b, kv_heads, n, d], those that
        mask [b, 1, 1, n] lets each row see (None: all)."""
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=q.shape[1] != k.shape[1]
        )


class Attention(nn.Module):
    """Pre-norm grouped-query attention on the local heads around a core (LocalCore or another
    strategy's), all-reduced over out_group; with a KV cache, the prompt and the decode steps.

    The core is a plain object, not a child module: it holds no weights."""

    def __init__(
        self,
        norm: RMSNorm,
        wqkv: nn.Module,
        wo: nn.Module,
        heads: int,
        kv_heads: int,
        core: LocalCore,
        out_group: dist.ProcessGroup | None,
        qk_norm: nn.ModuleList | None = None,
    ) -> None:
        super().__init__()
        self.norm, self.wqkv, self.wo = norm, wqkv, wo
        self.heads, self.kv_heads = heads, kv_heads
        self.core, self.out_group, self.qk_norm = core, out_group, qk_norm
        self.local_dim = core.head_dim // core.slices

    @property
    def cache_dims(self) -> tuple[int, int]:
        """(kv heads, head_dim) of this rank's KV cache."""
        return self.kv_heads, self.local_dim

    def forward(
        self,
        x: Tensor,
        rope: Rope,
        cache: tuple[Tensor, Tensor] | None = None,
        slots: Slots | None = None,
        prefill: bool = True,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x [b, s, hidden] -> the block's reduced output. With a cache (this microbatch's rows
        of the layer's k and v, [b, kv_heads, capacity, d]) the new K/V go to `slots` (with a
        sequence split only the owner writes); a decode step (not prefill) then attends over the
        filled slots, those `mask` [b, 1, 1, slots.valid] lets each row see (None: all)."""
        q, k, v = self.project(x, rope)
        if cache is not None:
            assert slots is not None
            if slots.write is not None:
                lo, hi = slots.write
                cache[0][:, :, lo:hi].copy_(k)
                cache[1][:, :, lo:hi].copy_(v)
        if cache is None or prefill:
            o = self.core.attend(q, k, v)
        else:
            assert slots is not None
            k, v = cache[0][:, :, : slots.valid], cache[1][:, :, : slots.valid]
            o = self.core.step(q, k, v, mask)
        del q, k, v
        o_in = merge_heads(o)
        del o  # before o_proj runs (when merge_heads copied)
        return self.output(o_in)

    def project(self, x: Tensor, rope: Rope) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [b, heads or kv_heads, s, d] of x [b, s, hidden]: normed, projected (one
        fused GEMM), the family's q/k norm and RoPE applied."""
        # The normed copy of x is a temporary the GEMM frees (not an argument held below).
        return self._rotated(self.qkv(self.norm(x)), rope)

    def qkv(self, h: Tensor) -> Tensor:
        """The fused q/k/v projection [b, s, heads + 2 kv_heads, d] of the normed input h."""
        b, s, _ = h.shape
        return self.wqkv(h).view(b, s, self.heads + 2 * self.kv_heads, self.local_dim)

    def project_normed(self, h: Tensor, rope: Rope) -> tuple[Tensor, Tensor, Tensor]:
        """project() of an input already normed by this block's norm."""
        return self._rotated(self.qkv(h), rope)

    def _rotated(self, qkv: Tensor, rope: Rope) -> tuple[Tensor, Tensor, Tensor]:
        h, kv = self.heads, self.kv_heads
        q, k, v = qkv.split((h, kv, kv), dim=2)
        q, k = rotate_qk(q, k, self.core.rope(rope), self.qk_norm)
        # [b, s, heads, d] views -> [b, heads, s, d]: strided, last dim contiguous, no copies.
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def output(self, o_in: Tensor) -> Tensor:
        """o_proj of the merged heads o_in [b, s, heads * d], all-reduced over out_group."""
        return all_reduce(self.wo(o_in), self.out_group)


def merge_heads(o: Tensor) -> Tensor:
    """A core's output [b, heads, s, d] as o_proj's input [b, s, heads * d]: a view when the
    kernel lays its output out [b, s, heads, d] (SDPA on CPU and CUDA), else a copy."""
    b, h, s, d = o.shape
    return o.transpose(1, 2).reshape(b, s, h * d)


class GatedMLP(nn.Module):
    """Pre-norm down(silu(gate(x)) * up(x)) on the local ffn columns, all-reduced."""

    def __init__(self, norm: RMSNorm, w_gate_up: nn.Module, w_down: nn.Module, group: Any) -> None:
        super().__init__()
        self.norm, self.gate_up, self.down, self.group = norm, w_gate_up, w_down, group

    def forward(self, x: Tensor) -> Tensor:
        # The normed copy of x is a temporary the GEMM frees: held as an argument through the
        # down GEMM it was 1.07 GB more than planc/cost/memory.py counts at a Llama-3-8B
        # batch-64 prefill (benchmarks/results/h200_decode_run8_planc.json).
        return self._down(self.gate_up(self.norm(x)))

    def from_normed(self, h: Tensor) -> Tensor:
        """The block's reduced output for an input h already normed by its norm."""
        return self._down(self.gate_up(h))

    def _down(self, gate_up: Tensor) -> Tensor:
        if isinstance(self.down, Linear):  # a plain weight: in the static decode step the
            # SiLU x up may be made inside the down GEMM (decode_gemm.gated_linear)
            out = decode_gemm.gated_linear(gate_up, self.down.weight, _ops.silu_mul)
            del gate_up
            return all_reduce(out, self.group)
        act = _ops.silu_mul(gate_up)
        del gate_up
        return self.reduced_down(act)

    def reduced_down(self, act: Tensor) -> Tensor:
        """down_proj of silu(gate) * up, all-reduced over the block's group."""
        return all_reduce(self.down(act), self.group)


class DecoderLayer(nn.Module):
    """x += attn(x); x += mlp(x), on the stage's residual stream x (updated in place); a decode
    passes the attention its rows of the layer's KV cache, the slots, prefill and the mask
    (`cached`: Attention.forward's arguments after rope)."""

    def __init__(self, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.attn, self.mlp = attn, mlp

    def forward(self, x: Tensor, rope: Rope, *cached: Any) -> Tensor:
        x.add_(self.attn(x, rope, *cached))
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
    return Linear(laid_out(weight))


def attention_weights(
    ctx: RankContext,
    reader: ShardReader,
    layer: int,
    rows: tuple[list[int], list[int]] | None = None,
    out_group: dist.ProcessGroup | None = None,
) -> tuple[nn.Module, nn.Module]:
    """This rank's fused q/k/v linear (column-parallel: q_proj rows rows[0], k/v_proj rows
    rows[1], with their biases when the family has them) and o linear (row-parallel: o_proj
    columns rows[0], its int8 scales those of the whole row over out_group). Default: the
    rows of the rank's heads (layout.q_heads / kv_heads), over the heads group."""
    lay, m = ctx.layout, ctx.cfg.model
    p, d = f"layers.{layer}.self_attn.", m.head_dim
    if rows is None:
        rows = (list(range(lay.q_heads.start * d, lay.q_heads.stop * d)),
                list(range(lay.kv_heads.start * d, lay.kv_heads.stop * d)))
        out_group = ctx.dim_group("heads")
    rows_q, rows_kv = rows
    shapes = {"q": m.heads * d, "k": m.kv_heads * d, "v": m.kv_heads * d}
    picks = {"q": rows_q, "k": rows_kv, "v": rows_kv}
    wqkv = torch.cat(
        [reader.row_indices(f"{p}{n}_proj.weight", picks[n], (shapes[n], m.hidden)) for n in "qkv"]
    )
    wo = reader.col_indices(p + "o_proj.weight", rows_q, (m.hidden, m.heads * d))
    qkv: nn.Module = make_linear(ctx, reader.place(wqkv), "attn")
    if m.features.qkv_bias:
        bias = [reader.row_indices(f"{p}{n}_proj.bias", picks[n], (shapes[n],)) for n in "qkv"]
        qkv = Biased(qkv, reader.place(torch.cat(bias)))
    return qkv, make_linear(ctx, reader.place(wo), "attn", out_group)


def load_qk_norm(
    ctx: RankContext,
    reader: ShardReader,
    layer: int,
    dims: list[int] | None = None,
    group: dist.ProcessGroup | None = None,
) -> nn.ModuleList | None:
    """The layer's q_norm and k_norm when the family has them (Qwen3), else None. dims: the
    head_dim indices this rank holds of each head (a head x head_dim split; their sum of
    squares is then all-reduced over `group`), default all."""
    m = ctx.cfg.model
    if not m.features.qk_norm:
        return None
    d = m.head_dim
    dims = list(range(d)) if dims is None else dims
    names = [f"layers.{layer}.self_attn.{n}_norm.weight" for n in ("q", "k")]
    return nn.ModuleList(
        HeadNorm(reader.place(reader.row_indices(name, dims, (d,))), m.features.norm_eps, d, group)
        for name in names
    )


def load_norm(ctx: RankContext, reader: ShardReader, name: str) -> RMSNorm:
    m = ctx.cfg.model
    return RMSNorm(reader.place(reader.full(name, (m.hidden,))), m.features.norm_eps)


def make_attention(ctx: RankContext, reader: ShardReader, layer: int,
                   core: LocalCore | None = None) -> Attention:
    """Layer `layer`'s attention over the rank's heads around `core` (default: SDPA over them,
    the "heads" core of runtime/cores.py; seq_attention passes its SeqCore)."""
    wqkv, wo = attention_weights(ctx, reader, layer)
    core = core or LocalCore(ctx.cfg.model.head_dim, ctx.cfg.causal)
    return assemble_attention(ctx, reader, layer, (wqkv, wo), core, ctx.dim_group("heads"),
                              load_qk_norm(ctx, reader, layer))  # fmt: skip


def assemble_attention(
    ctx: RankContext,
    reader: ShardReader,
    layer: int,
    weights: tuple[nn.Module, nn.Module],
    core: LocalCore,
    out_group: dist.ProcessGroup | None,
    qk_norm: nn.ModuleList | None,
) -> Attention:
    """The attention block of the rank's heads from its q/k/v and o linears (`weights`), its
    input norm (read here) and `core`, all-reduced over out_group."""
    lay = ctx.layout
    norm = load_norm(ctx, reader, f"layers.{layer}.input_layernorm.weight")
    return Attention(norm, *weights, len(lay.q_heads), len(lay.kv_heads), core, out_group,
                     qk_norm)  # fmt: skip


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
