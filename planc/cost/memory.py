"""Bytes: weight shards (with compression formats) and the buffers a layer's forward allocates.

Everything is exact integer arithmetic. The buffer list mirrors the op order of the runtime's
decoder layer (planc/backends/torch/runtime), so the peak computed from live intervals is a
prediction of `torch.cuda.max_memory_allocated`, to be judged against measurements.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalDims:
    """The per-device sizes one decoder layer works on."""

    tokens: int  # microbatch rows x local sequence: the T of [T, hidden]
    mb: int  # sequences in a microbatch (local)
    seq_q: int  # local query length
    seq_kv: int  # key length attended to per query block (full seq for local attention)
    hidden: int
    heads: int  # local query heads
    kv_heads: int  # local kv heads
    head_dim: int  # local head_dim slice
    ffn: int  # local ffn width (per expert for MoE)
    experts: int  # local experts (0: dense MLP)
    top_k: int
    elem: int  # bytes per element of the model dtype
    routed: int = 0  # token-expert pairs this device's experts process (balanced routing)


# ---------------------------------------------------------------------------------------------
# Weights


def linear_bytes(out_f: int, in_f: int, elem: int, fmt: str) -> int:
    """Bytes a [out_f, in_f] weight occupies in a storage format.

    int8: one byte per weight plus one scale per output row in the model dtype.
    2:4: half the values kept, plus metadata of 2 bits per kept value (torch's semi-structured
    layout stores, for every group of 4 inputs, two 2-bit indices: in_f/8 bytes per row).
    """
    n = out_f * in_f
    if fmt == "dense":
        return n * elem
    if fmt == "int8":
        return n + out_f * elem
    if fmt == "2:4":
        return (n // 2) * elem + n // 8
    if fmt == "int8+2:4":
        return n // 2 + n // 8 + out_f * elem
    raise ValueError(fmt)


def compression_fits(in_f: int, fmt: str) -> bool:
    return "2:4" not in fmt or in_f % 4 == 0


# ---------------------------------------------------------------------------------------------
# The buffers of one decoder layer's forward, in op order


@dataclass(frozen=True)
class BufferSpec:
    name: str
    bytes: int
    first: int
    last: int


@dataclass(frozen=True)
class OpSpec:
    name: str
    flops: int
    hbm_bytes: int


def layer_program(d: LocalDims, attention: str, sp: int, hd_split: int
                  ) -> tuple[list[OpSpec], list[BufferSpec]]:
    """Ops and transient buffers of one layer for one microbatch on one device.

    `attention` is local / ring / gather; `sp` the sequence-parallel degree; `hd_split` the
    head_dim split degree (partial scores are materialised and all-reduced when > 1).
    Buffer intervals are inclusive op indices. The residual stream entering the layer is an io
    buffer owned by the stage, not listed here; the layer's output residual is listed (it
    outlives the layer and becomes the next layer's input).
    """
    T, h, e = d.tokens, d.hidden, d.elem
    hq = d.heads * d.head_dim
    hkv = d.kv_heads * d.head_dim
    ops: list[OpSpec] = []
    bufs: list[BufferSpec] = []

    def op(name: str, flops: int, hbm: int) -> int:
        ops.append(OpSpec(name, flops, hbm))
        return len(ops) - 1

    def buf(name: str, nbytes: int, first: int, last: int) -> None:
        bufs.append(BufferSpec(name, nbytes, first, last))

    causal_frac_num, causal_frac_den = 1, 2  # causal attention does about half the score work
    kv_len = d.seq_kv
    i_norm = op("attn_norm", 4 * T * h, 2 * T * h * e)
    i_q = op("q_proj", 2 * T * h * hq, (T * h + h * hq + T * hq) * e)
    i_k = op("k_proj", 2 * T * h * hkv, (T * h + h * hkv + T * hkv) * e)
    i_v = op("v_proj", 2 * T * h * hkv, (T * h + h * hkv + T * hkv) * e)
    i_rope = op("rope", 6 * T * (hq + hkv), 2 * T * (hq + hkv) * e)
    score_flops = 2 * 2 * d.mb * d.heads * d.seq_q * kv_len * d.head_dim
    score_flops = score_flops * causal_frac_num // causal_frac_den
    i_attn = op(f"attention_{attention}", score_flops,
                (T * hq * 2 + 2 * d.mb * kv_len * hkv) * e)
    i_o = op("o_proj", 2 * T * hq * h, (T * hq + hq * h + T * h) * e)
    i_res1 = op("residual_add_1", T * h, 3 * T * h * e)
    buf("attn_norm_out", T * h * e, i_norm, i_v)
    buf("q", T * hq * e, i_q, i_rope)
    buf("k", T * hkv * e, i_k, i_rope)
    buf("v", T * hkv * e, i_v, i_attn)
    buf("q_rope", T * hq * e, i_rope, i_attn)
    buf("k_rope", T * hkv * e, i_rope, i_attn)
    buf("attn_out", T * hq * e, i_attn, i_o)
    if attention == "ring" and sp > 1:
        # K and V of the block in flight (double-buffered receive) and the float32
        # accumulators of the online softmax: output and log-sum-exp.
        buf("ring_kv_recv", 2 * T * hkv * e * 2, i_attn, i_attn)
        buf("ring_acc_out", T * hq * 4, i_attn, i_attn)
        buf("ring_lse", d.mb * d.heads * d.seq_q * 4 * 2, i_attn, i_attn)
    elif attention == "gather" and sp > 1:
        buf("gathered_kv", 2 * d.mb * kv_len * hkv * e, i_attn, i_attn)
    if hd_split > 1:
        # partial scores of every head in the group, float32, summed by all-reduce
        buf("partial_scores", d.mb * d.heads * d.seq_q * kv_len * 4, i_attn, i_attn)
        buf("probs", d.mb * d.heads * d.seq_q * kv_len * e, i_attn, i_attn)
    buf("o_proj_out", T * h * e, i_o, i_res1)
    buf("residual_1", T * h * e, i_res1, 10**9)  # closed below
    i_norm2 = op("mlp_norm", 4 * T * h, 2 * T * h * e)
    buf("mlp_norm_out", T * h * e, i_norm2, -1)  # closed below
    if d.experts == 0:
        f = d.ffn
        i_gate = op("gate_proj", 2 * T * h * f, (T * h + h * f + T * f) * e)
        i_silu = op("silu", 4 * T * f, 2 * T * f * e)
        i_up = op("up_proj", 2 * T * h * f, (T * h + h * f + T * f) * e)
        i_mul = op("mul", T * f, 3 * T * f * e)
        i_down = op("down_proj", 2 * T * f * h, (T * f + f * h + T * h) * e)
        buf("gate_out", T * f * e, i_gate, i_silu)
        buf("silu_out", T * f * e, i_silu, i_mul)
        buf("up_out", T * f * e, i_up, i_mul)
        buf("mlp_act", T * f * e, i_mul, i_down)
        last_in = i_up
    else:
        # Routed tokens: each token goes to top_k experts; with balanced routing this device's
        # experts see `d.routed` token copies (dropless: the average, not a bound).
        routed = d.routed
        f = d.ffn
        i_router = op("router", 2 * T * h * d.experts, (T * h) * e)
        i_disp = op("dispatch", 0, 2 * routed * h * e)
        i_exp = op("experts", 3 * 2 * routed * h * f, (3 * h * f * d.experts + 2 * routed * h) * e)
        i_comb = op("combine", 0, 2 * routed * h * e)
        i_down = op("weighted_sum", 2 * routed * h, (routed * h + T * h) * e)
        buf("router_logits", T * d.experts * 4, i_router, i_disp)
        buf("dispatch_send", routed * h * e, i_disp, i_disp)
        buf("dispatch_recv", routed * h * e, i_disp, i_exp)
        buf("expert_act", routed * f * e * 3, i_exp, i_exp)
        buf("expert_out", routed * h * e, i_exp, i_comb)
        buf("combine_recv", routed * h * e, i_comb, i_down)
        last_in = i_router
    i_res2 = op("residual_add_2", T * h, 3 * T * h * e)
    buf("mlp_out", T * h * e, i_down, i_res2)
    buf("residual_2", T * h * e, i_res2, i_res2)
    bufs = [
        BufferSpec(b.name, b.bytes, b.first, i_res2) if b.name == "residual_1" else
        BufferSpec(b.name, b.bytes, b.first, last_in) if b.name == "mlp_norm_out" else b
        for b in bufs
    ]
    return ops, bufs


def peak_live(bufs: list[BufferSpec], nops: int) -> int:
    """The largest sum of live buffer bytes at any op (intervals inclusive)."""
    best = 0
    for i in range(nops):
        live = sum(b.bytes for b in bufs if b.first <= i <= b.last)
        best = max(best, live)
    return best
