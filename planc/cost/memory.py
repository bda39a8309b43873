"""Bytes: the buffers a layer's forward allocates.

Everything is exact integer arithmetic. The buffer list mirrors the op order of the runtime's
decoder layer (planc/backends/torch/runtime), so the peak computed from live intervals is a
prediction of `torch.cuda.max_memory_allocated`, to be judged against measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from planc.layout.moe import MoeMode

# The terms of a device's memory row, in the order every table prints them (check, show, JSON);
# the row's peak is their sum, so a printed row adds up.
MEMORY_TERMS = ("weights", "activations", "kv_cache", "buffers", "reserve")
MEMORY_COLUMNS = (*MEMORY_TERMS, "peak")  # the memory table of `check` and of `show`
MEMORY_HEADER = [k.replace("_", " ") for k in MEMORY_COLUMNS]


def static_step_bytes(rows: int, generate: int, positions: int, head_dim: int, elem: int,
                      workspace: int, inbox_hidden: int = 0) -> int:
    """What the static decode step (backends/torch/runtime/decode_step.py) holds beside the
    eager decode: the RoPE cos / sin tables of every position [positions, head_dim // 2], the
    int64 token buffer [rows, generate] and, on a GPU, one more cuBLAS `workspace` (the
    device's, presets.py) for each of its two new streams, the warm-up's side stream and the
    capture stream of torch.cuda.graph (measured on one H200: 64.5 MiB above the eager decode's
    peak, benchmarks/results/h200_decode_run2_planc.json against
    h200_decode_run1_grouped_bmm.json); on a pipeline stage after the first, the hidden state
    each microbatch's step starts from, received there [rows, inbox_hidden] (`inbox_hidden`:
    the model's hidden size there, 0 on a first stage, which receives token ids). Its counters
    are a few bytes per row (not counted); the graphs' private pool is reserved, not
    allocated."""
    return (2 * workspace + 2 * positions * (head_dim // 2) * elem + rows * generate * 8
            + rows * inbox_hidden * elem)


def first_step_tuning_bytes(flush: int, step_live: int, workspace: int, qkv_split: bool) -> int:
    """What the static step's first warm-up holds above a decode row's other terms while
    Triton's autotuner times the attention kernel's tiles (at layer 0's attention, once per
    shape in a process): its L2-flush buffer `flush` (the device's `autotune`) and `step_live`,
    the step's buffers live at the attention, less the stream workspaces static_step_bytes
    counts that do not exist yet: the capture stream's, and the warm-up stream's too where
    q/k/v is the Triton split (no cuBLAS call comes before the attention). The CUDA
    allocator's trace of the seed plan at batch 1 on an H200 had its peak there (256 MiB of
    flush beside the step's 0.4 MB and one workspace). A decode row's buffers hold what of this
    exceeds its activations (the larger of the prefill's and the step's peaks): the flush is a
    library's buffer, not an activation."""
    return flush + step_live - workspace * (2 if qkv_split else 1)


def with_peak(row: dict[str, int]) -> dict[str, int]:
    """The row with its peak: the sum of its MEMORY_TERMS."""
    return {**row, "peak": sum(row[k] for k in MEMORY_TERMS)}


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
    moe_mode: MoeMode = "all_to_all"  # planc/layout/moe.py
    experts_total: int = 0  # experts of the model (router width)
    # a static decode step's MoE block (runtime/moe.moe_static): the rows every local expert
    # runs over (the ep group's gathered rows with all_to_all, else the rank's); 0: routed
    static_moe_rows: int = 0
    # ... and whether it runs its local experts as batched GEMMs over stacked weights
    # (layout/moe.stacked_experts: plain weights), else expert by expert
    static_moe_batched: bool = False


# The bytes of one call of a collective, by the `size` a strategy record's collective names
# (planc/layout/strategies.py Comm), from the sizes of the layer it runs in (a prefill's, or a
# decode step's for a step's own collectives).
MESSAGE_BYTES: dict[str, Callable[[LocalDims], int]] = {
    # the residual stream [T, hidden]: o_proj's and down_proj's partial sums, a stage's output
    "residual": lambda d: d.tokens * d.hidden * d.elem,
    # float32 partial scores of the local heads over head_dim slices
    "scores": lambda d: d.mb * d.heads * d.seq_q * d.seq_kv * 4,
    # K and V of the local block [T, kv_heads x head_dim] each
    "kv": lambda d: 2 * d.tokens * d.kv_heads * d.head_dim * d.elem,
    # every token's top_k copies of its hidden state, sent to (and back from) their experts
    "routed_copies": lambda d: d.tokens * d.top_k * d.hidden * d.elem,
    # the rows this device's experts process (balanced routing)
    "routed_rows": lambda d: d.routed * d.hidden * d.elem,
    # a static decode step's MoE block: each row's dense gates [T, E] float32, and the ep
    # group's float32 partial outputs of its gathered rows
    "dense_gates": lambda d: d.tokens * d.experts_total * 4,
    "static_moe_partials": lambda d: d.static_moe_rows * d.hidden * 4,
    # flash-decoding: each rank's partial output and log-sum-exp per local head, float32
    "partials": lambda d: d.tokens * d.heads * (d.head_dim + 1) * 4,
    # the microbatch's next tokens (int64), sent back from the last pipeline stage to the first
    "token_ids": lambda d: d.mb * 8,
    # a greedy token over a split vocabulary: (max logit, its token) per row as float64 pairs
    "token_choice": lambda d: d.tokens * 2 * 8,
}


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


@dataclass
class Program:
    """One layer's ops and buffers as its terms add them, in op order (intervals: inclusive op
    indices). An attention core's buffers go to `bufs` (listed before the block's shared ones)
    or, with late=True, to `late` (listed after attn_out: layer_program moves them over)."""

    d: LocalDims
    sp: int  # the sequence degree (the ring's blocks, flash-decoding's partials)
    ops: list[OpSpec] = field(default_factory=list)
    bufs: list[BufferSpec] = field(default_factory=list)
    late: list[BufferSpec] = field(default_factory=list)

    def op(self, name: str, flops: int, hbm: int) -> int:
        self.ops.append(OpSpec(name, flops, hbm))
        return len(self.ops) - 1

    def buf(self, name: str, nbytes: int, first: int, last: int, late: bool = False) -> None:
        (self.late if late else self.bufs).append(BufferSpec(name, nbytes, first, last))


def _widths(d: LocalDims) -> tuple[int, int]:
    """Q and K: the local query and key (or value) widths, heads x head_dim."""
    return d.heads * d.head_dim, d.kv_heads * d.head_dim


def _attention_bytes(d: LocalDims) -> int:
    """q and the output [T, Q], K and V of the keys attended to, read and written once."""
    Q, K = _widths(d)
    return (2 * d.tokens * Q + 2 * d.mb * d.seq_kv * K) * d.elem


def _score_flops(d: LocalDims) -> int:
    return 2 * 2 * d.mb * d.heads * d.seq_q * d.seq_kv * d.head_dim // 2  # causal: half


def _lse(d: LocalDims) -> int:
    return d.mb * d.heads * d.seq_q * 4  # float32 log-sum-exp per query row and head


def _one_op(p: Program, mode: str, extra: int = 0) -> int:
    """Attention as one op (`attention_<mode>`) with its log-sum-exp; its index."""
    i = p.op(f"attention_{mode}", _score_flops(p.d), _attention_bytes(p.d) + extra)
    p.buf("attn_lse", _lse(p.d), i, i)
    return i


# ---------------------------------------------------------------------------------------------
# The attention cores' terms, by the core name of the strategy records (planc/layout/strategies
# .py Memory; runtime/cores.py runs the cores): each adds its ops and buffers to the program and
# returns the op that writes the attention output (attn_out).


def heads_terms(p: Program) -> int:
    """SDPA over the local heads (runtime/layers.py LocalCore): no split, or tensor parallel."""
    return _one_op(p, "local")


def head_dim_terms(p: Program) -> int:
    """A head x head_dim split (runtime/headdim_block.py): the scores materialised."""
    d = p.d
    scores = d.mb * d.heads * d.seq_q * d.seq_kv
    # float32 partials written, all-reduced in place, read by the softmax, probabilities written
    # in e and read by the product with V
    i = _one_op(p, "local", scores * (4 + 4 + 2 * d.elem))
    # partial scores of every head in the group, float32, summed by all-reduce, then the
    # softmax probabilities in the model dtype
    p.buf("partial_scores", scores * 4, i, i, late=True)
    p.buf("probs", scores * d.elem, i, i, late=True)
    # Not counted (headdim_block.py): with a 16-bit e, q and k in float32 ([T, Q]*4,
    # [T, K]*4) and the matmul's contiguous copies of q and of k repeated over the query
    # heads ([T, Q]*4 each); the causal mask [seq, seq] bool and its negation; the softmax
    # row max and sum [b, heads, seq, 1]*4; v repeated over the query heads [T, Q]*e; the
    # o_proj input [T, Q]*e (a transpose-reshape copy).
    return i


def ring_terms(p: Program) -> int:
    """Ring attention over the sequence axis (runtime/seq_attention.py, ring_attention.py)."""
    d, sp = p.d, p.sp
    T, e = d.tokens, d.elem
    Q, K = _widths(d)
    lse, score_flops, attn_bytes = _lse(d), _score_flops(d), _attention_bytes(d)
    # K and V stacked [2T, K] and a receive buffer posted while steps remain; step 0 (the own
    # block, T rows) makes its output in e and a float32 copy that becomes the accumulator; a
    # later zig-zag block has T rows and T/2 keys or T/2 rows: its output (in e) merges into the
    # accumulator; then the accumulator is cast to e. With grouped-query attention each block
    # repeats K/V to the query heads.
    # step 0 writes its output in e and copies it to float32; each later step writes a
    # block output in e, and the merge scales the float32 accumulator (read, write) and
    # adds the block times its weight (read both, write): the bytes the implementation
    # moves beyond the kernels' own
    step0_extra = T * Q * (e + e + 4)
    steps_extra = (sp - 1) * T * Q * (e + 2 * 4 + 4 + e + 4)
    # seq_kv is one block here: the own block is causal (half its scores), and each of the
    # sp - 1 blocks that arrive is half visible under zig-zag: sp x the own block's work
    i_s0 = p.op("attention_ring_step0", score_flops, attn_bytes + step0_extra)
    i_sn = p.op("attention_ring_steps", score_flops * (sp - 1),
                attn_bytes * (sp - 1) + steps_extra)
    i_attn = p.op("attention_ring_cast", T * Q, T * Q * (4 + e))
    rep = 2 * T * Q * e if K < Q else 0
    p.buf("ring_kv", 2 * T * K * e, i_s0, i_sn)
    p.buf("ring_recv", 2 * T * K * e, i_s0, i_sn if sp > 2 else i_s0)
    p.buf("ring_block0_out", T * Q * e, i_s0, i_s0)
    p.buf("ring_block_kv_repeat", rep, i_s0, i_sn)
    p.buf("ring_acc_out", T * Q * 4, i_s0, i_attn)
    p.buf("ring_acc_lse", lse, i_s0, i_sn)
    p.buf("ring_block_out", T * Q * e, i_sn, i_sn)
    p.buf("ring_block_lse", lse, i_sn, i_sn)
    return i_attn


def gather_terms(p: Program) -> int:
    """All-gathered K/V over the sequence axis (runtime/seq_attention.py)."""
    d = p.d
    i = _one_op(p, "gather")
    p.buf("gathered_kv", 2 * d.mb * d.seq_kv * _widths(d)[1] * d.elem, i, i, late=True)
    p.buf("gather_mask", d.seq_q * d.seq_kv, i, i, late=True)
    p.buf("gather_bias", d.seq_q * d.seq_kv * d.elem, i, i, late=True)
    # Not counted: gloo on CPU makes two transient copies of the gathered K/V inside the
    # all_gather (NCCL writes in place); the bias is float32 on CPU (e on CUDA, where the
    # memory-efficient kernel runs, since flash takes no mask).
    return i


def flash_decode_terms(p: Program) -> int:
    """A decode step over a split sequence (runtime/decode_attention.py flash_decode)."""
    d = p.d
    i = _one_op(p, "flash_decode")
    # each rank's partial output and log-sum-exp (float32), all-gathered and merged
    p.buf("decode_partials", p.sp * d.tokens * (_widths(d)[0] + d.heads) * 4, i, i, late=True)
    return i


ATTENTION_TERMS: dict[str, Callable[[Program], int]] = {
    "heads": heads_terms,  # the core of a layer whose strategies add no attention term
    "head_dim": head_dim_terms,
    "ring": ring_terms,
    "gather": gather_terms,
    "flash_decode": flash_decode_terms,
}


# ---------------------------------------------------------------------------------------------
# The MLP's terms, by the model's MLP (runtime/cores.py MLP; a MoE block by its mode, planc/
# layout/moe.py): each adds its ops and buffers after the block's norm (op `i_norm`) and
# returns the op that writes the MLP output (mlp_out).


def dense_terms(p: Program, i_norm: int) -> int:
    """runtime/layers.py: fused gate/up, SiLU * up in place, down."""
    d = p.d
    T, h, e, f = d.tokens, d.hidden, d.elem, d.ffn
    i_gu = p.op("gate_up_proj", 2 * T * h * 2 * f, (T * h + 2 * h * f + 2 * T * f) * e)
    p.op("silu_mul", 5 * T * f, 3 * T * f * e)  # in place on gate_up
    i_down = p.op("down_proj", 2 * T * f * h, (T * f + f * h + T * h) * e)
    p.buf("mlp_norm_out", T * h * e, i_norm, i_gu)
    p.buf("gate_up", 2 * T * f * e, i_gu, i_down)
    return i_down


def _experts_op(p: Program) -> int:
    d = p.d
    R, h, f = d.routed, d.hidden, d.ffn
    return p.op("experts", 3 * 2 * R * h * f, (3 * h * f * d.experts + 2 * R * h) * d.elem)


def moe_all_to_all_terms(p: Program, i_norm: int) -> tuple[int, int]:
    """route -> send [Tk, H] (norm out freed) -> recv [R, H] (send freed) -> grouped [R, H]
    (recv freed) -> expert outputs [R, H] + one expert's gate/up/down -> back [Tk, H] (outputs
    freed) -> float32 copy (back freed) -> out32 [T, H]*4 -> cast to e. (The experts op, the
    output op.)"""
    d = p.d
    T, h, e, R = d.tokens, d.hidden, d.elem, d.routed
    Tk = T * d.top_k
    i_send = p.op("dispatch", 0, 2 * Tk * h * e)
    i_recv = p.op("all_to_all_dispatch", 0, 2 * R * h * e)
    i_grp = p.op("regroup", 0, 2 * R * h * e)
    i_exp = _experts_op(p)
    i_back = p.op("all_to_all_combine", 0, 2 * Tk * h * e)
    i_w, i_add, i_down = _weighted_sum_ops(p, Tk)
    p.buf("mlp_norm_out", T * h * e, i_norm, i_send)
    p.buf("dispatch_send", Tk * h * e, i_send, i_recv)
    p.buf("dispatch_recv", R * h * e, i_recv, i_grp)
    p.buf("grouped", R * h * e, i_grp, i_exp)
    p.buf("expert_out", R * h * e, i_exp, i_back)
    p.buf("combine_back", Tk * h * e, i_back, i_w)
    _weighted_sum_bufs(p, Tk, i_w, i_add, i_down)
    return i_exp, i_down


def moe_gathered_terms(p: Program, i_norm: int) -> tuple[int, int]:
    """replicated / local: the block's input (norm out) lives through the call; gathered rows
    [R, H] -> expert outputs [R, H] + one expert's temporaries (gathered freed) -> float32 copy
    [R, H]*4 (outputs freed) -> out32 [T, H]*4 (index_add) -> cast. (The experts op, the output
    op.)"""
    d = p.d
    T, h, e, R = d.tokens, d.hidden, d.elem, d.routed
    i_gat = p.op("gather_rows", 0, 2 * R * h * e)
    i_exp = _experts_op(p)
    i_w, i_add, i_down = _weighted_sum_ops(p, R)
    p.buf("mlp_norm_out", T * h * e, i_norm, i_down)
    p.buf("gathered_rows", R * h * e, i_gat, i_exp)
    p.buf("expert_out", R * h * e, i_exp, i_w)
    _weighted_sum_bufs(p, R, i_w, i_add, i_down)
    return i_exp, i_down


def _weighted_sum_ops(p: Program, rows: int) -> tuple[int, int, int]:
    """Both MoE modes end alike on their `rows` expert outputs: weighted in float32, summed per
    token with index_add into [T, H] float32, cast to e. (Its three ops.)"""
    T, h, e = p.d.tokens, p.d.hidden, p.d.elem
    i_w = p.op("weight_f32", rows * h, rows * h * (e + 4))
    i_add = p.op("index_add", rows * h, (rows + T) * h * 4)
    return i_w, i_add, p.op("cast_out", T * h, T * h * (4 + e))


def _weighted_sum_bufs(p: Program, rows: int, i_w: int, i_add: int, i_down: int) -> None:
    """The float32 buffers of _weighted_sum_ops, listed after the mode's own buffers."""
    p.buf("contrib_f32", rows * p.d.hidden * 4, i_w, i_add)
    p.buf("out_f32", p.d.tokens * p.d.hidden * 4, i_add, i_down)


MOE_TERMS: dict[str, Callable[[Program, int], tuple[int, int]]] = {
    "all_to_all": moe_all_to_all_terms,
    "replicated": moe_gathered_terms,
    "local": moe_gathered_terms,
}


def moe_static_terms(p: Program, i_norm: int) -> tuple[int, int]:
    """A static decode step's block (runtime/moe.moe_static) on G = static_moe_rows rows: the
    dense gates [T, E]*4 (scattered from the top-k), with all_to_all the gathered rows [G, H]
    and gates [G, E]*4; the local experts over the G rows, their outputs weighted in float32
    and summed into out32 [G, H]*4; the rank's rows cast to e. The block's input (norm out)
    lives through the call. Returns (the first expert op, the output op).

    Stacked weights (static_moe_batched) run as the seven kernels moe_static launches for all
    n local experts at once: the gate/up batched GEMM [n, G, 2F], SiLU, the product, the down
    batched GEMM [n, G, H], the float32 copy, the weighting and the sum over experts. Otherwise
    each expert is the eight kernels moe_static runs for it (counted from the code, one op
    each: the step's graph starts each): the gate GEMM, SiLU in place, the up GEMM, the
    product, the down GEMM, the float32 copy, the weighting and the add."""
    d = p.d
    T, h, e, G, E, f = d.tokens, d.hidden, d.elem, d.static_moe_rows, d.experts_total, d.ffn
    i_gates = p.op("dense_gates", 0, T * E * 4 * 2)
    if d.static_moe_batched:
        return _batched_expert_terms(p, i_norm, i_gates)
    i_exp = i_w = -1
    for _ in range(d.experts):
        p.op("expert_gate_proj", 2 * G * h * f, (G * h + h * f + G * f) * e)
        p.op("expert_silu", 4 * G * f, 2 * G * f * e)
        p.op("expert_up_proj", 2 * G * h * f, (G * h + h * f + G * f) * e)
        p.op("expert_mul", G * f, 3 * G * f * e)
        i_down = p.op("expert_down_proj", 2 * G * f * h, (G * f + f * h + G * h) * e)
        i_exp = i_down if i_exp < 0 else i_exp
        p.op("expert_f32", 0, G * h * (e + 4))
        p.op("expert_weight", G * h, G * h * 4 * 2 + G * E * 4)
        i_w = p.op("expert_add", G * h, G * h * 4 * 3)
    i_out = p.op("cast_out", T * h, T * h * (4 + e))
    p.buf("mlp_norm_out", T * h * e, i_norm, i_out)
    p.buf("dense_gates", T * E * 4, i_gates, i_exp)
    if G > T:  # gathered: the ep group's rows and gate rows
        p.buf("gathered_rows", G * h * e, i_gates, i_w)
        p.buf("gathered_gates", G * E * 4, i_gates, i_w)
    p.buf("out_f32", G * h * 4, i_exp, i_out)
    p.buf("expert_out_f32", G * h * 4, i_exp, i_exp)
    p.buf("expert_gate_up", 2 * G * f * e, i_exp, i_exp)
    p.buf("expert_down", G * h * e, i_exp, i_exp)
    return i_exp, i_out


def _batched_expert_terms(p: Program, i_norm: int, i_gates: int) -> tuple[int, int]:
    """moe_static_terms over stacked weights (moe._batched_experts): n = local experts, each
    op over all of them; every intermediate is [n, G, ...] and freed after its one reader."""
    d = p.d
    T, h, e, G, E, f, n = (d.tokens, d.hidden, d.elem, d.static_moe_rows, d.experts_total,
                           d.ffn, d.experts)
    i_gu = p.op("experts_gate_up_proj", 2 * n * G * h * 2 * f,
                (G * h + n * 2 * f * h + n * G * 2 * f) * e)
    i_silu = p.op("experts_silu", 4 * n * G * f, 2 * n * G * f * e)
    i_mul = p.op("experts_mul", n * G * f, 3 * n * G * f * e)
    i_down = p.op("experts_down_proj", 2 * n * G * f * h, (n * G * f + n * f * h + n * G * h) * e)
    i_f32 = p.op("experts_f32", 0, n * G * h * (e + 4))
    p.op("experts_weight", n * G * h, n * G * h * 4 * 2 + G * E * 4)
    i_sum = p.op("experts_sum", n * G * h, (n * G * h + G * h) * 4)
    i_out = p.op("cast_out", T * h, T * h * (4 + e))
    p.buf("mlp_norm_out", T * h * e, i_norm, i_out)
    # moe_static holds its gathered rows and gate rows until _batched_experts returns (its
    # sum's output allocated beside them), and the rank's own gates to its end
    if G > T:
        p.buf("dense_gates", T * E * 4, i_gates, i_gates)
        p.buf("gathered_rows", G * h * e, i_gates, i_sum)
        p.buf("gathered_gates", G * E * 4, i_gates, i_sum)
    else:
        p.buf("dense_gates", T * E * 4, i_gates, i_out)
    p.buf("experts_gate_up", n * G * 2 * f * e, i_gu, i_mul)
    p.buf("experts_act", n * G * f * e, i_silu, i_down)
    p.buf("experts_out", n * G * h * e, i_down, i_f32)
    p.buf("experts_out_f32", n * G * h * 4, i_f32, i_sum)
    p.buf("out_f32", G * h * 4, i_sum, i_out)
    return i_gu, i_out


def moe_terms(p: Program, i_norm: int) -> int:
    """runtime/moe.py. R = (token, expert) rows this device's experts process and n = rows per
    local expert, both assuming balanced routing (a router that favours some experts moves the
    peak by the extra rows of its busiest expert; see benchmarks/README.md)."""
    d = p.d
    T, h, e, f = d.tokens, d.hidden, d.elem, d.ffn
    n = -(-d.routed // d.experts)
    E = d.experts_total or d.experts
    i_router = p.op("router", 2 * T * h * E, (T * h + T * E) * e)
    p.buf("router_probs", T * E * (e + 4 + 4), i_router, i_router)
    if d.static_moe_rows > 0:  # every local expert over every row: its own buffers
        return moe_static_terms(p, i_norm)[1]
    i_exp, i_down = MOE_TERMS[d.moe_mode](p, i_norm)
    # Not counted (moe_block.py, moe.py): top-k weights [T, k]*4 (renormalised into a new
    # one unless the family keeps them) and ids [T, k]*8; the sort order [Tk]*8; with
    # all_to_all the counts [E]*8 twice and the regroup index [R]*8. The weighting is in
    # place in float32 (contrib_f32 is the copy a 16-bit e makes).
    p.buf("expert_gate_up", 2 * n * f * e, i_exp, i_exp)
    p.buf("expert_down", n * h * e, i_exp, i_exp)
    return i_down


MLP_TERMS: dict[str, Callable[[Program, int], int]] = {"dense": dense_terms, "moe": moe_terms}


def layer_program(d: LocalDims, terms: Collection[str], sp: int
                  ) -> tuple[list[OpSpec], list[BufferSpec]]:
    """Ops and transient buffers of one layer for one microbatch on one device.

    Mirrors planc/backends/torch/runtime/layers.py (see its docstring): the residual stream x
    [T, hidden] is owned by the stage and updated in place (not listed here); each block
    normalises into a fresh buffer that the first (fused) GEMM frees; RoPE, SiLU * up and the
    residual add run in place. `terms`: the memory-term keys of the plan's strategies
    (planc/layout/strategies.py memory_terms); the one of ATTENTION_TERMS among them is the
    attention core ("heads" without one), the MLP's are the model's (MLP_TERMS, by d.experts).
    `sp` is the sequence degree. Intervals are inclusive op indices.

    Each runtime block names the terms it allocates here; the comments say, per block, what it
    allocates that this list leaves out (measured on CPU with the profiler's allocation
    timeline), so a gap between a predicted and a measured peak can be traced to a line.
    """
    cores = [k for k in terms if k in ATTENTION_TERMS]
    if len(cores) > 1:
        raise ValueError(f"one attention core per layer, not {cores}")
    T, h, e = d.tokens, d.hidden, d.elem
    Q, K = _widths(d)
    p = Program(d, sp)
    # attention block
    i_norm = p.op("attn_norm", 4 * T * h, 2 * T * h * e)
    i_qkv = p.op("qkv_proj", 2 * T * h * (Q + 2 * K),
                 (T * h + h * (Q + 2 * K) + T * (Q + 2 * K)) * e)
    i_rq = p.op("rope_q", 3 * T * Q, 3 * T * Q * e)
    i_rk = p.op("rope_k", 3 * T * K, 3 * T * K * e)
    i_attn = ATTENTION_TERMS[cores[0] if cores else "heads"](p)
    i_o = p.op("o_proj", 2 * T * Q * h, (T * Q + Q * h + T * h) * e)
    i_add1 = p.op("all_reduce_add_1", T * h, 3 * T * h * e)
    p.buf("attn_norm_out", T * h * e, i_norm, i_qkv)
    p.buf("qkv", T * (Q + 2 * K) * e, i_qkv, i_attn)
    p.buf("rope_tmp_q", T * (Q // 2) * e, i_rq, i_rq)
    p.buf("rope_tmp_k", T * (K // 2) * e, i_rk, i_rk)
    # Not counted: with q/k norm (Qwen3) RoPE runs on the normed copies [T, Q]*e and [T, K]*e
    # instead of in place on qkv (layers.rotate_qk). ring / gather (seq_attention.py): the
    # kernel's own workspace; o_proj reads the attention output as a view (the CPU and CUDA
    # kernels lay it out [b, s, heads, d]; a kernel that does not adds a [T, Q]*e copy).
    p.buf("attn_out", T * Q * e, i_attn, i_o)
    p.bufs += p.late
    p.buf("o_proj_out", T * h * e, i_o, i_add1)
    # MLP block
    i_norm2 = p.op("mlp_norm", 4 * T * h, 2 * T * h * e)
    i_down = MLP_TERMS["moe" if d.experts else "dense"](p, i_norm2)
    i_add2 = p.op("all_reduce_add_2", T * h, 3 * T * h * e)
    p.buf("mlp_out", T * h * e, i_down, i_add2)
    return p.ops, p.bufs


# ---------------------------------------------------------------------------------------------
# What a stage holds beside its layers' transient buffers (compiler/lower.py stage_buffers)


@dataclass(frozen=True)
class StageBuffer:
    name: str
    role: str  # io, activation, communication, workspace
    bytes: int
    transient: bool = False  # live only outside the layers (final norm), not beside them


@dataclass(frozen=True)
class StageShape:
    """Where a stage is and how it runs, for the stage terms."""

    first: bool
    last: bool
    microbatches: int
    rounds: bool  # a decode's prompt: run in the decode rounds (lower.stage_buffers)


def send_recv_terms(st: StageShape, d: LocalDims) -> list[StageBuffer]:
    """Pipeline (runtime/pipeline.py): a later stage posts the receive of microbatch m+1 while
    computing m, and a stage that sends keeps one send in flight (the previous microbatch's
    x). Neither in decode rounds: there a stage posts its receive after computing and waits
    for its send before the next round's item (measured on two H200s: the first stage's peak
    was one x below the prediction that counted it, benchmarks/results/
    h200x2_decode_pp_run48.json)."""
    x = d.tokens * d.hidden * d.elem
    out = []
    if not st.first and st.microbatches > 1 and not st.rounds:
        out.append(StageBuffer("recv_next", "communication", x))
    if not st.last and st.microbatches > 1 and not st.rounds:
        out.append(StageBuffer("send_in_flight", "communication", x))
    return out


STAGE_TERMS: dict[str, Callable[[StageShape, LocalDims], list[StageBuffer]]] = {
    "send_recv": send_recv_terms,
}


def live_at(bufs: list[BufferSpec], i: int) -> int:
    """The bytes of the buffers live at op i (intervals inclusive)."""
    return sum(b.bytes for b in bufs if b.first <= i <= b.last)


def peak_live(bufs: list[BufferSpec], nops: int) -> int:
    """The largest sum of live buffer bytes at any op."""
    return max((live_at(bufs, i) for i in range(nops)), default=0)
