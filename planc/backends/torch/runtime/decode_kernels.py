"""Kernels of one decode step over a KV cache, safe to capture in a CUDA graph: the attention,
RoPE with the cache write, and the step's end (greedy argmax, the token's copies, the counters).

Why a module of its own: the decode step is replayed as one CUDA graph while the lengths of the
rows grow, so the attention must read every per-step quantity on the device (no `.item()`, no
boolean indexing, no shape that depends on data) and launch the same kernels every replay.

Semantics shared by every kernel here:

- q: [b, heads, d], one new (already RoPE-rotated) query token per row; bf16, fp16 or fp32.
- k_cache, v_cache: [b, kv_heads, capacity, d], possibly views (strided rows of a bigger
  cache); the last dim is contiguous. heads = kv_heads * g (grouped-query attention, g >= 1);
  query head h uses kv head h // g (Hugging Face's repeat_kv convention).
- lengths: int32 or int64 tensor [b] on q's device: row i sees the slots j < lengths[i].
- gap_lo: int tensor [b] and gap_hi: a Python int. The slots gap_lo[i] <= j < gap_hi are NOT
  visible (right-padded prompts: the padding between a row's prompt end and the shared context
  length). gap_lo[i] == gap_hi means no gap. gap_hi is baked into a captured graph.
- scale: float (head_dim ** -0.5 usually).
- Result: [b, heads, d] in q's dtype, softmax(q k^T * scale over the visible slots) v with
  float32 scores, softmax and accumulation. Every row sees at least one slot.

Kernels (`KERNELS`, picked by `choose`):

- `grouped_attention` ("grouped_bmm"): plain torch over the slots [0, n_read) (n_read: the
  caller's static bucket); the CPU path and the fallback.
- `flash_decode_triton` ("triton_flash_decode"): flash-decoding in Triton, one program per
  (row, kv head, split of the row's length), K/V read once per kv head, merged by
  log-sum-exp in a second small kernel.

`rope_flash_decode_triton` is `rope_store_triton` followed by `flash_decode_triton` in the
attention kernel alone (decode_step.StaticStep's path on a GPU for a family without a q/k norm).
Beside them (used by decode_step.StaticStep with the Triton attention): `rope_store_triton`,
`argmax_triton` and `finish_step_triton` (their docstrings say what each replaces).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from planc.backends.torch.runtime import dependent_launch
from planc.backends.torch.runtime.triton_mode import interpreting

try:  # optional: the torch CUDA wheels bring triton; CPU machines may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

# A jitted Triton kernel (triton.jit's JITFunction, or triton.autotune's Autotuner around one):
# not a plain callable, it is launched as kernel[grid](...). triton is optional, so Any.
Kernel = Any

BLOCK_N = 64  # slots per tile of the Triton kernel
MIN_G = 16  # tl.dot needs >= 16 rows: the g query heads of a kv head are padded up to this


def available() -> bool:
    """Whether the Triton kernel can run here (triton importable)."""
    return triton is not None


# --------------------------------------------------------------------------------------------
# Plain torch: the CPU path and the fallback


def visible_slots(lengths: Tensor, gap_lo: Tensor, gap_hi: int, n: int) -> Tensor:
    """[b, n] bool: which of the slots [0, n) each row sees, built on the device."""
    j = torch.arange(n, device=lengths.device)
    seen = j < lengths.unsqueeze(-1)
    gap = (j >= gap_lo.unsqueeze(-1)) & (j < gap_hi)
    return seen & ~gap


def grouped_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    lengths: Tensor,
    gap_lo: Tensor,
    gap_hi: int,
    scale: float,
    n_read: int,
) -> Tensor:
    """Attention over the slots [0, n_read) of the cache (n_read >= max(lengths), static).

    GQA without repeating K/V: q is viewed as [b, kv, g, d] and multiplied with the [b, kv,
    n_read, d] view of the cache, so each kv head is read once for its g query heads. Scores,
    softmax and the weighted sum are float32 (K and V are upcast; for fp32 inputs K is not
    copied). V is zeroed where invisible so that garbage, NaN included, in unwritten or padding
    slots cannot leak through 0 * NaN (K needs nothing: its scores are masked to -inf).
    """
    b, heads, d = q.shape
    kv = k_cache.shape[1]
    g = heads // kv
    k = k_cache[:, :, :n_read]
    v = v_cache[:, :, :n_read]
    seen = visible_slots(lengths, gap_lo, gap_hi, n_read)[:, None, None, :]  # [b, 1, 1, n]
    qg = q.reshape(b, kv, g, d).float()
    scores = torch.matmul(qg, k.float().transpose(-1, -2)) * scale  # [b, kv, g, n]
    scores = scores.masked_fill(~seen, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    v32 = torch.where(seen.transpose(-1, -2), v.float(), 0.0)  # [b, kv, n, d] float32
    out = torch.matmul(probs, v32)  # [b, kv, g, d]
    return out.reshape(b, heads, d).to(q.dtype)


# --------------------------------------------------------------------------------------------
# Triton flash-decoding


def _attn_partials_body(
    Q, K, V, LENGTHS, GAP_LO, gap_hi, OUT, LSE, scale,
    sq_b, sq_h, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_s, sl_b, sl_h,
    COS, SIN, POS, SLOT, sc_r,
    KV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
    DOT_F32: tl.constexpr, WRITE_LSE: tl.constexpr, ROPE: tl.constexpr,
    PDL: tl.constexpr = False, sq_p=0, QPARTS: tl.constexpr = 1,
):
    """One program: row, kv head, split. Writes (out, lse) of its g query heads over its part
    of the row's visible slots (out 0, lse -inf when the part is empty). Without WRITE_LSE (one
    split) OUT is the result itself, in its dtype, and there is no merge to run.

    ROPE (rope_flash_decode_triton): Q is the fused q/k/v output [b, heads + 2 kv, d] of the
    step's new token, not yet rotated and not yet in the cache. The program rotates its q heads
    (cos / sin rows COS / SIN + POS[row] * sc_r, rotate-half in float32 rounded once to the
    dtype, as _rope_store_body does), leaves the new token's slot SLOT[0] out of its tiles, and
    the last split takes the new token from registers: its rotated k and its v join that
    split's softmax, and the same program writes them into the caches at SLOT[0] for the steps
    after (one program per (row, kv head) writes; no program reads that slot from memory).
    DOT_F32: tl.dot on float32 operands with exact ("ieee") products: for fp32 inputs (tf32
    would lose digits) and under the interpreter, whose bf16 tl.dot is wrong (triton 3.9:
    numerically garbage); bf16/fp16 products are exact in float32, so this is the same sum as
    the tensor cores' bf16 dot with float32 accumulation. PDL: launched with programmatic
    dependent launch, it waits for the kernel before it first (runtime/dependent_launch.py).
    QPARTS (with ROPE, when sq_p > 0): Q holds the q/k/v product's float32 partials over K,
    QPARTS of them sq_p apart (decode_products.split_kernel); each value read is their sum in part
    order rounded to the caches' dtype (the q/k/v GEMM's output rounding)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    split = tl.program_id(1)
    row = (pid // KV).to(tl.int64)  # row * its stride passes 2**31 in a large cache
    kvh = pid % KV
    length = tl.load(LENGTHS + row).to(tl.int32)
    glo = tl.load(GAP_LO + row).to(tl.int32)
    # this split's tiles: the row's tiles shared out evenly (from the length, on the device)
    n_tiles = tl.cdiv(length, BLOCK_N)
    per = tl.cdiv(n_tiles, SPLITS)
    t_lo = split * per
    t_hi = tl.minimum(t_lo + per, n_tiles)
    # tiles wholly inside the gap [glo, gap_hi) are skipped: [s_lo, s_hi)
    s_lo = tl.cdiv(glo, BLOCK_N)
    s_hi = tl.maximum(gap_hi // BLOCK_N, s_lo)
    n1 = tl.maximum(tl.minimum(t_hi, s_lo) - t_lo, 0)
    t2 = tl.maximum(t_lo, s_hi)
    n2 = tl.maximum(t_hi - t2, 0)

    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    g_ok = offs_g < G
    d_ok = offs_d < D
    heads = kvh * G + offs_g
    q_ptrs = Q + row * sq_b + heads[:, None] * sq_h + offs_d[None, :]
    q_mask = g_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    dt = K.dtype.element_ty  # the model's dtype (Q's, unless Q holds float32 partials)
    for qpart in tl.static_range(1, QPARTS):
        q += tl.load(q_ptrs + qpart * sq_p, mask=q_mask, other=0.0)
    q = q.to(dt)
    k_base = K + row * sk_b + kvh * sk_h
    v_base = V + row * sv_b + kvh * sv_h
    new_slot = -1  # ROPE: the new token's slot, read from registers instead of the cache
    if ROPE:
        half: tl.constexpr = D // 2
        pos = tl.load(POS + row)
        new_slot = tl.load(SLOT).to(tl.int32)
        cs_off = tl.where(offs_d < half, offs_d, offs_d - half)  # cos / sin are [.., d // 2]
        partner = tl.where(offs_d < half, offs_d + half, offs_d - half)
        sign = tl.where(offs_d < half, -1.0, 1.0)  # rotate_half(x) = (-x2, x1)
        c = tl.load(COS + pos * sc_r + cs_off, mask=d_ok, other=0.0).to(tl.float32)
        s_ = tl.load(SIN + pos * sc_r + cs_off, mask=d_ok, other=0.0).to(tl.float32)
        qp_ptrs = Q + row * sq_b + heads[:, None] * sq_h + partner[None, :]
        qp = tl.load(qp_ptrs, mask=q_mask, other=0.0)
        for qpart in tl.static_range(1, QPARTS):
            qp += tl.load(qp_ptrs + qpart * sq_p, mask=q_mask, other=0.0)
        qp = qp.to(dt).to(tl.float32)
        q = (q.to(tl.float32) * c[None, :] + (sign[None, :] * qp) * s_[None, :]).to(dt)

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, BLOCK_D], tl.float32)
    for i in range(n1 + n2):
        t = tl.where(i < n1, t_lo + i, t2 + i - n1)
        slots = t * BLOCK_N + offs_n
        seen = (slots < length) & ((slots < glo) | (slots >= gap_hi)) & (slots != new_slot)
        kv_mask = seen[:, None] & d_ok[None, :]
        k = tl.load(k_base + slots[:, None] * sk_n + offs_d[None, :], mask=kv_mask, other=0.0)
        if DOT_F32:
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(seen[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + slots[:, None] * sv_n + offs_d[None, :], mask=kv_mask, other=0.0)
        if DOT_F32:  # p rounded to V's dtype as on the tensor cores, then exact products
            pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    if ROPE:  # the new token, in the last split only (-inf elsewhere: weight 0); read after
        # the tiles' loop so that nothing of it stays live in registers through the loop
        c = tl.load(COS + pos * sc_r + cs_off, mask=d_ok, other=0.0).to(tl.float32)
        s_ = tl.load(SIN + pos * sc_r + cs_off, mask=d_ok, other=0.0).to(tl.float32)
        new = Q + row * sq_b + (KV * G + kvh) * sq_h  # this kv head's k, then its v
        kx = tl.load(new + offs_d, mask=d_ok, other=0.0)
        kp = tl.load(new + partner, mask=d_ok, other=0.0)
        v_new = tl.load(new + KV * sq_h + offs_d, mask=d_ok, other=0.0)
        for qpart in tl.static_range(1, QPARTS):
            kx += tl.load(new + qpart * sq_p + offs_d, mask=d_ok, other=0.0)
            kp += tl.load(new + qpart * sq_p + partner, mask=d_ok, other=0.0)
            v_new += tl.load(new + qpart * sq_p + KV * sq_h + offs_d, mask=d_ok, other=0.0)
        kx = kx.to(dt).to(tl.float32)
        kp = kp.to(dt).to(tl.float32)
        v_new = v_new.to(dt)
        k_new = (kx * c + (sign * kp) * s_).to(dt)
        last_d = (offs_d * 0 + split) == SPLITS - 1  # as vectors: masks (the interpreter)
        tl.store(k_base + new_slot * sk_n + offs_d, k_new.to(K.dtype.element_ty),
                 mask=d_ok & last_d)
        tl.store(v_base + new_slot * sv_n + offs_d, v_new.to(V.dtype.element_ty),
                 mask=d_ok & last_d)
        s_n = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * scale
        s_n = tl.where(g_ok & ((offs_g * 0 + split) == SPLITS - 1), s_n, float("-inf"))
        m_new = tl.maximum(m_i, s_n)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p_n = tl.exp(s_n - m_safe)
        l_i = l_i * alpha + p_n
        p_r = p_n.to(v_new.dtype).to(tl.float32)  # rounded to V's dtype, as in the tiles
        acc = acc * alpha[:, None] + p_r[:, None] * v_new.to(tl.float32)[None, :]
        m_i = m_new
    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    o_ptrs = OUT + row * so_b + heads[:, None] * so_h + split * so_s + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])
    if WRITE_LSE:
        tl.store(LSE + row * sl_b + heads * sl_h + split, lse, mask=g_ok)


def _merge_body(
    PART, LSE, OUT, sp_b, sp_h, sp_s, sl_b, sl_h, so_b, so_h,
    HEADS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLITS: tl.constexpr, S_PAD: tl.constexpr, PDL: tl.constexpr = False,
):
    """One program per (row, head): out = sum_s exp(lse_s - L) out_s, L = logsumexp(lse)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    row = pid // HEADS
    h = pid % HEADS
    offs_s = tl.arange(0, S_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < SPLITS
    d_ok = offs_d < D
    lse = tl.load(LSE + row * sl_b + h * sl_h + offs_s, mask=s_ok, other=float("-inf"))
    top = tl.max(lse, 0)
    w = tl.exp(lse - top)  # -inf parts weigh 0; every row sees a slot, so top is finite
    part_ptrs = PART + row * sp_b + h * sp_h + offs_s[:, None] * sp_s + offs_d[None, :]
    part = tl.load(part_ptrs, mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)
    tl.store(OUT + row * so_b + h * so_h + offs_d, out.to(OUT.dtype.element_ty), mask=d_ok)


def _rope_store_body(
    QKV, COS, SIN, SLOT, QOUT, K, V,
    sx_r, sx_h, sc_r, sq_r, sq_h, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
    H: tl.constexpr, KV: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program per (row, head of the fused q/k/v output): a q head rotated into QOUT, a k
    head rotated into the K cache at slot SLOT[0], a v head copied into the V cache there.
    Rotate-half RoPE (Hugging Face's) in float32, rounded once to the output's dtype."""
    row = tl.program_id(0).to(tl.int64)  # row * its cache stride passes 2**31 in a large cache
    head = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    ok = offs < HALF
    src = QKV + row * sx_r + head * sx_h
    x1 = tl.load(src + offs, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF + offs, mask=ok, other=0.0).to(tl.float32)
    slot = tl.load(SLOT)
    if head < H + KV:
        c = tl.load(COS + row * sc_r + offs, mask=ok, other=0.0).to(tl.float32)
        s = tl.load(SIN + row * sc_r + offs, mask=ok, other=0.0).to(tl.float32)
        y1 = x1 * c - x2 * s
        y2 = x2 * c + x1 * s
        if head < H:
            dst = QOUT + row * sq_r + head * sq_h
        else:
            dst = K + row * sk_b + (head - H) * sk_h + slot * sk_n
    else:
        y1 = x1
        y2 = x2
        dst = V + row * sv_b + (head - H - KV) * sv_h + slot * sv_n
    tl.store(dst + offs, y1.to(QOUT.dtype.element_ty), mask=ok)
    tl.store(dst + HALF + offs, y2.to(QOUT.dtype.element_ty), mask=ok)


_BUILT: dict[bool, tuple[Kernel, Kernel]] = {}
_BUILT_ROPE: dict[bool, Kernel] = {}


def _kernels() -> tuple[Kernel, Kernel]:
    """The jitted kernels, built on first use: triton.jit reads TRITON_INTERPRET when it wraps
    a function, so building late lets a test run them in Triton's interpreter on CPU tensors
    (TRITON_INTERPRET=1 set before the first call) without touching the process at import."""
    interpret = interpreting()
    if interpret not in _BUILT:
        attn = triton.jit(_attn_partials_body, do_not_specialize=["gap_hi"])
        if not interpret:  # the autotuner times on the GPU; the interpreter runs BLOCK_N
            attn = triton.autotune(
                TILE_CONFIGS, key=["KV", "G", "D", "SPLITS", "sk_h", "ROPE", "QPARTS"])(attn)
        _BUILT[interpret] = (attn, triton.jit(_merge_body))
    return _BUILT[interpret]


def tuned_tiles() -> list[str]:
    """The attention tiles triton's autotuner picked in this process, one per shape it tuned,
    for the run's metrics: the pick is timed afresh in every process, so a run says which ran
    (h200_decode_issue15.md, run 32: at batch 64 the tiles timed 122.8 to 143.5 us)."""
    tuned = _BUILT.get(False, (None, None))[0]
    picks = (getattr(tuned, "cache", None) or {}).values()
    return sorted({f"BLOCK_N {c.kwargs['BLOCK_N']}, {c.num_warps} warps, {c.num_stages} stages"
                   for c in picks})


def _tile_configs() -> list:  # type: ignore[type-arg]
    """Tile size and pipelining of the attention kernel, timed by triton.autotune at its first
    call for each shape (a decode step's warm-up, before the CUDA graph is captured)."""
    if triton is None:
        return []
    return [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s)
            for n in (64, 128) for w in (4, 8) for s in (2, 3, 4)]


TILE_CONFIGS = _tile_configs()


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the device (static); 4 off CUDA (the interpreter)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_splits(capacity: int, programs: int, device: torch.device) -> int:
    """Splits of the sequence from static information only: enough (row, kv head, split)
    programs to give every SM two, no more splits than tiles of the capacity."""
    want = math.ceil(2 * _sm_count(device) / max(programs, 1))
    return max(1, min(want, math.ceil(capacity / BLOCK_N)))


def flash_decode_triton(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    lengths: Tensor,
    gap_lo: Tensor,
    gap_hi: int,
    scale: float,
    splits: int | None = None,
) -> Tensor:
    """Flash-decoding (see the module docstring for the semantics).

    Grid (b * kv_heads, splits): each program loads the g query heads of its kv head (padded
    to MIN_G rows for tl.dot), walks BLOCK_N-slot tiles of its share of the row's length (the
    share is computed on the device from lengths, tiles wholly in the gap are skipped, tiles
    at or beyond the length are not read), online softmax in float32, and writes a partial
    (out, lse). A second kernel merges the splits by log-sum-exp into q's dtype; with one
    split (large batches) the first writes the result and the merge does not run.
    """
    assert q.stride(-1) == 1
    return _flash_decode(q, q.shape[1], k_cache, v_cache, lengths, gap_lo, gap_hi, scale,
                         splits, None)


def rope_flash_decode_triton(
    qkv: Tensor,
    cos: Tensor,
    sin: Tensor,
    pos: Tensor,
    slot: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    lengths: Tensor,
    gap_lo: Tensor,
    gap_hi: int,
    scale: float,
    heads: int,
    splits: int | None = None,
) -> Tensor:
    """rope_store_triton followed by flash_decode_triton, in the attention kernel alone: the
    step's new token comes as the fused q/k/v output qkv [b, heads + 2 kv, d], unrotated;
    cos / sin are the tables of every position [positions, d // 2] and pos [b] each row's
    position (so the step gathers no rows of them either); its k (rotated) and v are written
    into the caches at slot [1], which lengths already count. The same result as the two calls
    (the new token's score is a float32 sum where the tiles' is tl.dot's) and the same caches
    after. Why: the separate RoPE kernel was 3.3 us of a 277 us layer at batch 64, 1.6 us at
    batch 1, a kernel start and drain each layer for under a megabyte of work
    (benchmarks/results/h200_decode_profile_run11_l4_in_major.json).

    qkv may also be the q/k/v product's float32 partials over K [parts, b, heads + 2 kv, d]
    (decode_products.split_kernel): the kernel sums them as it reads them, rounded to the
    caches' dtype, so no reduce kernel runs between the product and the attention."""
    kv = (qkv.shape[-2] - heads) // 2
    assert qkv.shape[-2] == heads + 2 * kv and qkv.stride(-1) == 1 and qkv.shape[-1] % 2 == 0
    assert cos.stride(-1) == 1 and sin.stride(-1) == 1 and cos.stride(0) == sin.stride(0)
    assert k_cache.shape[1] == kv
    return _flash_decode(qkv, heads, k_cache, v_cache, lengths, gap_lo, gap_hi, scale, splits,
                         (cos, sin, pos, slot))


def _flash_decode(q: Tensor, heads: int, k_cache: Tensor, v_cache: Tensor, lengths: Tensor,
                  gap_lo: Tensor, gap_hi: int, scale: float, splits: int | None,
                  rope: tuple[Tensor, Tensor, Tensor, Tensor] | None) -> Tensor:
    """Both entry points' launch: q [b, >= heads, d] (its first `heads` rows of dim 1 are the
    query heads); rope (cos, sin, pos, slot) when q is the unrotated q/k/v output."""
    if triton is None:
        raise RuntimeError("flash_decode_triton needs triton (pip install triton, or the "
                           "torch CUDA wheel that brings it); use grouped_attention instead")
    parts = {"QPARTS": 1, "sq_p": 0}
    if q.dim() == 4:  # the q/k/v product's float32 partials (rope_flash_decode_triton)
        assert rope is not None and q.dtype == torch.float32
        parts = {"QPARTS": q.shape[0], "sq_p": max(q.stride(0), 1)}
        q = q[0]
    b, _, d = q.shape
    _, kv, capacity, _ = k_cache.shape
    g = heads // kv
    assert heads == kv * g and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    n_splits = splits or default_splits(capacity, b * kv, q.device)
    block_d = triton.next_power_of_2(d)
    dtype = k_cache.dtype  # q's, unless q holds float32 partials
    assert parts["sq_p"] or q.dtype == dtype
    out = torch.empty(b, heads, d, dtype=dtype, device=q.device)
    attn, merge = _kernels()
    if n_splits == 1:  # the one split's output is the result: no partials, no merge kernel
        part, lse = out.unsqueeze(2), out.new_empty(1, dtype=torch.float32)  # lse: unused
    else:
        part = torch.empty(b, heads, n_splits, d, dtype=torch.float32, device=q.device)
        lse = torch.empty(b, heads, n_splits, dtype=torch.float32, device=q.device)
    cos, sin, pos, slot = rope if rope is not None else (lengths, lengths, lengths, lengths)
    attn[(b * kv, n_splits)](
        q, k_cache, v_cache, lengths, gap_lo, gap_hi, part, lse, scale,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        part.stride(0), part.stride(1), part.stride(2),
        *((lse.stride(0), lse.stride(1)) if n_splits > 1 else (0, 0)),
        cos, sin, pos, slot, cos.stride(0) if rope is not None else 0,
        KV=kv, G=g, G_PAD=max(MIN_G, triton.next_power_of_2(g)), D=d, BLOCK_D=block_d,
        SPLITS=n_splits, DOT_F32=dtype == torch.float32 or interpreting(),
        WRITE_LSE=n_splits > 1, ROPE=rope is not None, **dependent_launch.kernel_args(q.device),
        **parts,
        **({"BLOCK_N": BLOCK_N} if interpreting() else {}),  # else the autotuner's tile
    )
    if n_splits == 1:
        return out
    merge[(b * heads,)](
        part, lse, out, part.stride(0), part.stride(1), part.stride(2),
        lse.stride(0), lse.stride(1), out.stride(0), out.stride(1),
        HEADS=heads, D=d, BLOCK_D=block_d, SPLITS=n_splits,
        S_PAD=triton.next_power_of_2(n_splits), **dependent_launch.kernel_args(q.device),
    )
    return out


# --------------------------------------------------------------------------------------------
# RoPE and the cache write of a decode step, in one kernel


def rope_store_torch(qkv: Tensor, cos: Tensor, sin: Tensor, slot: Tensor, k_cache: Tensor,
                     v_cache: Tensor, heads: int, rope: Callable[..., Tensor]) -> Tensor:
    """The step's q [r, heads, d] (rotated) from the fused q/k/v output qkv [r, heads + 2 kv,
    d], its k (rotated) and v written into the caches [r, kv, capacity, d] at slot [1]; cos /
    sin [r, d // 2] of each row's position. `rope`: the layer's RoPE (layers.Elementwise.rope,
    which may rotate in place). The plain torch form (tests check both forms against float64)."""
    kv = (qkv.shape[1] - heads) // 2
    q, k, v = qkv.split((heads, kv, kv), dim=1)
    c, s = cos[:, None], sin[:, None]
    q, k = rope(q, c, s), rope(k, c, s)
    k_cache.index_copy_(2, slot, k.unsqueeze(2))
    v_cache.index_copy_(2, slot, v.unsqueeze(2))
    return q


def rope_store_triton(qkv: Tensor, cos: Tensor, sin: Tensor, slot: Tensor, k_cache: Tensor,
                      v_cache: Tensor, heads: int) -> Tensor:
    """rope_store_torch in one kernel launch instead of four or more (two rotations, two
    index_copy_), each a few microseconds in a step of 330-400 kernels: grid (rows, heads + 2 kv)."""
    if triton is None:
        raise RuntimeError("rope_store_triton needs triton; use rope_store_torch instead")
    r, n_heads, d = qkv.shape
    kv = (n_heads - heads) // 2
    assert n_heads == heads + 2 * kv and d % 2 == 0 and qkv.stride(-1) == 1
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    assert cos.stride(-1) == 1 and sin.stride(-1) == 1 and cos.stride(0) == sin.stride(0)
    q = torch.empty(r, heads, d, dtype=qkv.dtype, device=qkv.device)
    interpret = interpreting()
    if interpret not in _BUILT_ROPE:
        _BUILT_ROPE[interpret] = triton.jit(_rope_store_body)
    _BUILT_ROPE[interpret][(r, n_heads)](
        qkv, cos, sin, slot, q, k_cache, v_cache,
        qkv.stride(0), qkv.stride(1), cos.stride(0), q.stride(0), q.stride(1),
        *k_cache.stride()[:3], *v_cache.stride()[:3],
        H=heads, KV=kv, HALF=d // 2, BLOCK=triton.next_power_of_2(d // 2),
    )
    return q


# --------------------------------------------------------------------------------------------
# The greedy token and the step's counters: the end of a decode step in three kernels


ARGMAX_BLOCK = 4096  # logits per program of the argmax's first pass


def _argmax_parts_body(LOGITS, PART_MAX, PART_IDX, n, s_r, parts, BLOCK: tl.constexpr,
                      PDL: tl.constexpr = False):
    """Program (row, part): the maximum of the part's logits (float32) and the first index of
    it in the row (tl.argmax keeps the leftmost of equal values)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    offs = part * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(LOGITS + row * s_r + offs, mask=offs < n, other=float("-inf")).to(tl.float32)
    i = tl.argmax(x, 0, tie_break_left=True)
    tl.store(PART_MAX + row * parts + part, tl.max(x, 0))
    tl.store(PART_IDX + row * parts + part, part * BLOCK + i)


def _argmax_pick_body(PART_MAX, PART_IDX, OUT, parts, P_PAD: tl.constexpr,
                     PDL: tl.constexpr = False):
    """Program row: the first part holding the row's maximum, its index into OUT (int64)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, P_PAD)
    ok = offs < parts
    m = tl.load(PART_MAX + row * parts + offs, mask=ok, other=float("-inf"))
    first = tl.argmax(m, 0, tie_break_left=True)
    tl.store(OUT + row, tl.load(PART_IDX + row * parts + first).to(tl.int64))


def _finish_step_body(TOK, TOK_OUT, s_out, TOKENS, s_tok, POS, SLOT, LENGTHS, COL, r,
                      BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """One program: each row's chosen token into TOK_OUT and into column COL[0] of TOKENS,
    then the counters advanced (POS, LENGTHS per row; SLOT, COL once)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    col = tl.load(COL)
    for start in range(0, r, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < r
        rows = offs.to(tl.int64)
        tok = tl.load(TOK + rows, mask=ok, other=0)
        tl.store(TOK_OUT + rows * s_out, tok, mask=ok)
        tl.store(TOKENS + rows * s_tok + col, tok, mask=ok)
        tl.store(POS + rows, tl.load(POS + rows, mask=ok, other=0) + 1, mask=ok)
        tl.store(LENGTHS + rows, tl.load(LENGTHS + rows, mask=ok, other=0) + 1, mask=ok)
    tl.debug_barrier()  # every warp has read COL (and written its rows) before it moves on
    tl.store(SLOT, tl.load(SLOT) + 1)
    tl.store(COL, col + 1)


_BUILT_END: dict[bool, tuple[Kernel, Kernel, Kernel]] = {}


def _end_kernels() -> tuple[Kernel, Kernel, Kernel]:
    interpret = interpreting()
    if interpret not in _BUILT_END:
        _BUILT_END[interpret] = (triton.jit(_argmax_parts_body), triton.jit(_argmax_pick_body),
                                 triton.jit(_finish_step_body))
    return _BUILT_END[interpret]


def argmax_triton(logits: Tensor) -> Tensor:
    """logits.argmax(-1) of [r, n] (int64 [r], the first index of the maximum) in two kernels:
    the maximum and its first index per ARGMAX_BLOCK logits of a row, then the first part
    holding the row's maximum. torch's argmax here is a reduction of one thread block per row
    (33-35 us for a 128,256-token vocabulary on an H200), and the two-pass torch form
    (vocab_parallel.first_argmax) five kernels: 22 us at batch 64, 11 us at the seed shape
    (benchmarks/results/h200_decode_profile_run9_b64_cublas.json, _run6_seed.json).
    Finite logits (NaN is not ordered as torch orders it)."""
    if triton is None:
        raise RuntimeError("argmax_triton needs triton; use vocab_parallel.first_argmax")
    r, n = logits.shape
    assert logits.stride(-1) == 1
    parts = triton.cdiv(n, ARGMAX_BLOCK)
    part_max = torch.empty(r, parts, dtype=torch.float32, device=logits.device)
    part_idx = torch.empty(r, parts, dtype=torch.int32, device=logits.device)
    out = torch.empty(r, dtype=torch.long, device=logits.device)
    first, pick, _ = _end_kernels()
    pdl = dependent_launch.kernel_args(logits.device)
    first[(r, parts)](logits, part_max, part_idx, n, logits.stride(0), parts,
                      BLOCK=ARGMAX_BLOCK, num_warps=8, **pdl)
    pick[(r,)](part_max, part_idx, out, parts, P_PAD=max(16, triton.next_power_of_2(parts)),
               **pdl)
    return out


def finish_step_triton(tok: Tensor, tok_out: Tensor, tokens: Tensor, pos: Tensor,
                       slot: Tensor, lengths: Tensor, col: Tensor) -> None:
    """The step's end in one kernel: tok [r] (int64) into tok_out [r, 1] and into column col[0]
    of tokens [r, generate] (the rows of this microbatch, a view), pos and lengths [r] + 1,
    slot and col [1] + 1. The torch form is decode_step.StaticStep's copy_, index_copy_ and
    StepState.advance: six kernels of about 1.2 us each."""
    if triton is None:
        raise RuntimeError("finish_step_triton needs triton")
    r = tok.shape[0]
    assert tokens.stride(1) == 1 and pos.is_contiguous() and lengths.is_contiguous()
    _end_kernels()[2][(1,)](tok, tok_out, tok_out.stride(0), tokens, tokens.stride(0), pos,
                            slot, lengths, col, r,
                            BLOCK=min(1024, max(16, triton.next_power_of_2(r))),
                            **dependent_launch.kernel_args(tok.device))


# --------------------------------------------------------------------------------------------
# Registry


KERNELS: dict[str, Callable[..., Tensor]] = {
    "grouped_bmm": grouped_attention,
    "triton_flash_decode": flash_decode_triton,
}


def choose(device: torch.device | str, dtype: torch.dtype) -> str:
    """The kernel name for a device and dtype (recorded in the run's metrics): Triton's
    flash-decoding on CUDA when triton imports, else the plain torch path. The two kernels take
    different last arguments (n_read vs splits): the caller passes what its pick needs."""
    del dtype  # every supported dtype (bf16, fp16, fp32) runs on both
    forced = os.environ.get("PLANC_DECODE_ATTENTION")  # for measuring, and for CI to run the
    if forced in KERNELS:  # Triton kernels through the whole step in Triton's interpreter
        return forced
    if torch.device(device).type == "cuda" and available():
        return "triton_flash_decode"
    return "grouped_bmm"
