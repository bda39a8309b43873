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

    Mirrors planc/backends/torch/runtime/layers.py (see its docstring): the residual stream x
    [T, hidden] is owned by the stage and updated in place (not listed here); each block
    normalises into a fresh buffer that the first (fused) GEMM frees; RoPE, SiLU * up and the
    residual add run in place. `attention` is local / ring / gather; `sp` the sequence degree;
    `hd_split` the head_dim split (partial scores are materialised and all-reduced when > 1).
    Intervals are inclusive op indices.
    """
    T, h, e = d.tokens, d.hidden, d.elem
    Q = d.heads * d.head_dim
    K = d.kv_heads * d.head_dim
    ops: list[OpSpec] = []
    bufs: list[BufferSpec] = []

    def op(name: str, flops: int, hbm: int) -> int:
        ops.append(OpSpec(name, flops, hbm))
        return len(ops) - 1

    def buf(name: str, nbytes: int, first: int, last: int) -> None:
        bufs.append(BufferSpec(name, nbytes, first, last))

    kv_len = d.seq_kv
    # attention block
    i_norm = op("attn_norm", 4 * T * h, 2 * T * h * e)
    i_qkv = op("qkv_proj", 2 * T * h * (Q + 2 * K), (T * h + h * (Q + 2 * K) + T * (Q + 2 * K)) * e)
    i_rq = op("rope_q", 3 * T * Q, 3 * T * Q * e)
    i_rk = op("rope_k", 3 * T * K, 3 * T * K * e)
    score_flops = 2 * 2 * d.mb * d.heads * d.seq_q * kv_len * d.head_dim // 2  # causal: half
    i_attn = op(f"attention_{attention}", score_flops, (2 * T * Q + 2 * d.mb * kv_len * K) * e)
    i_o = op("o_proj", 2 * T * Q * h, (T * Q + Q * h + T * h) * e)
    i_add1 = op("all_reduce_add_1", T * h, 3 * T * h * e)
    buf("attn_norm_out", T * h * e, i_norm, i_qkv)
    buf("qkv", T * (Q + 2 * K) * e, i_qkv, i_attn)
    buf("rope_tmp_q", T * (Q // 2) * e, i_rq, i_rq)
    buf("rope_tmp_k", T * (K // 2) * e, i_rk, i_rk)
    buf("attn_out", T * Q * e, i_attn, i_o)
    buf("attn_lse", d.mb * d.heads * d.seq_q * 4, i_attn, i_attn)
    if attention == "ring" and sp > 1:
        # stacked K/V to send, the block received, and the float32 online-softmax state:
        # running output and log-sum-exp, plus one block's output and lse
        buf("ring_kv_send", 2 * T * K * e, i_attn, i_attn)
        buf("ring_kv_recv", 2 * T * K * e, i_attn, i_attn)
        buf("ring_acc_out", T * Q * 4, i_attn, i_attn)
        buf("ring_block_out", T * Q * 4, i_attn, i_attn)
        buf("ring_lse", 2 * d.mb * d.heads * d.seq_q * 4, i_attn, i_attn)
    elif attention == "flash_decode" and sp > 1:
        # each rank's partial output and log-sum-exp (float32), all-gathered and merged
        buf("decode_partials", sp * T * (Q + d.heads) * 4, i_attn, i_attn)
    elif attention == "gather" and sp > 1:
        buf("gathered_kv", 2 * 2 * d.mb * kv_len * K * e, i_attn, i_attn)  # chunks + concat
        buf("gather_mask", d.seq_q * kv_len, i_attn, i_attn)
    if hd_split > 1:
        # partial scores of every head in the group, float32, summed by all-reduce, then the
        # softmax probabilities in the model dtype
        buf("partial_scores", d.mb * d.heads * d.seq_q * kv_len * 4, i_attn, i_attn)
        buf("probs", d.mb * d.heads * d.seq_q * kv_len * e, i_attn, i_attn)
    buf("o_proj_out", T * h * e, i_o, i_add1)
    # MLP block
    i_norm2 = op("mlp_norm", 4 * T * h, 2 * T * h * e)
    if d.experts == 0:
        f = d.ffn
        i_gu = op("gate_up_proj", 2 * T * h * 2 * f, (T * h + 2 * h * f + 2 * T * f) * e)
        i_act = op("silu_mul", 5 * T * f, 3 * T * f * e)
        i_down = op("down_proj", 2 * T * f * h, (T * f + f * h + T * h) * e)
        buf("mlp_norm_out", T * h * e, i_norm2, i_gu)
        buf("gate_up", 2 * T * f * e, i_gu, i_down)
    else:
        # Routed tokens: each token goes to top_k experts; with balanced routing this device's
        # experts see `d.routed` token copies (dropless: the average, not a bound).
        routed = d.routed
        f = d.ffn
        i_router = op("router", 2 * T * h * d.experts, (T * h) * e)
        i_disp = op("dispatch", 0, 2 * routed * h * e)
        i_exp = op("experts", 3 * 2 * routed * h * f, (3 * h * f * d.experts + 2 * routed * h) * e)
        i_down = op("combine", 2 * routed * h, (routed * h + T * h) * e)
        buf("mlp_norm_out", T * h * e, i_norm2, i_router)
        buf("router_logits", T * d.experts * 4, i_router, i_disp)
        buf("dispatch_send", routed * h * e, i_disp, i_disp)
        buf("dispatch_recv", routed * h * e, i_disp, i_exp)
        buf("expert_act", routed * f * e * 2, i_exp, i_exp)
        buf("expert_out", routed * h * e, i_exp, i_down)
    i_add2 = op("all_reduce_add_2", T * h, 3 * T * h * e)
    buf("mlp_out", T * h * e, i_down, i_add2)
    return ops, bufs


def peak_live(bufs: list[BufferSpec], nops: int) -> int:
    """The largest sum of live buffer bytes at any op (intervals inclusive)."""
    best = 0
    for i in range(nops):
        live = sum(b.bytes for b in bufs if b.first <= i <= b.last)
        best = max(best, live)
    return best
