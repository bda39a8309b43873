"""Where the batch-64 decode attention's time goes, against layouts of its work it does not run.

The runtime's kernel (decode_kernels.flash_decode_triton) runs one program per (row, kv head):
512 programs at batch 64, where the GPU holds about 3 of them per SM (396 at once), so a second
wave of 116 programs runs on under a third of the machine. Parts (`--part`):
- balance (run 31): the runtime's kernel at batch sizes whose programs fill whole waves or not
  (48, 49, 64, 66, 96, 99, 128 rows), and a stream-K layout of the same attention at batch 64:
  a fixed grid of P programs, each taking an equal run of the flattened (row, kv head, tile)
  space, writing a float32 partial (out, lse) per piece, merged by log-sum-exp; timed with the
  merge kernel and without it (what an in-kernel fixup could reach).
- stride (run 32): the runtime's kernel with each tile forced, over caches of other capacities
  (the stride between (row, kv head) regions) and base offsets; then autotuned.
- pdl (run 33): the tile forced, with and without the RoPE fusion and PDL, alone (ten calls in a
  graph) and after a q/k/v GEMM as in the step.
Run 34 timed a variant that handled the new token before the tiles (`--part newfirst` at commit
8ac2ae3, which had the kernel's NEW_FIRST option); it was no faster and was taken out. Run 39
timed the first tile's loads issued before the RoPE rotation's (`--part peel` at commit
be10005, the kernel's PEEL option): 25% slower, taken out.

Run on the GPU machine from the repository root:
    PYTHONPATH=$PWD python benchmarks/decode_attention_balance_h200.py --part balance \
        --out $OUT/balance.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_attention_h200 import Shape, kv_bytes, make_inputs, reference_f32, row_lengths
from decode_splitk_h200 import ROPE_SHAPE, rope_attention_inputs
from graph_timer import us_per_call

from planc.backends.torch.runtime import decode_kernels as dk


@triton.jit
def _attn_stream_body(
    Q, K, V, LENGTHS, PART, LSE, scale, W, total, cap_tiles,
    sq_b, sq_h, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sp_b, sp_h, sp_k, sl_b, sl_h,
    KV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr,
):
    """Program pid: the tiles [pid * W, (pid + 1) * W) of the (row, kv head, tile) space, each
    (row, kv head) owning cap_tiles of it; one partial per (row, kv head) piece, at index
    pid - first program of that (row, kv head). Its tile loop is the runtime kernel's
    (decode_kernels._attn_partials_body, without RoPE or the gap), copied so that only the
    layout of the work differs between the two."""
    pid = tl.program_id(0)
    start = pid * W
    end = tl.minimum(start + W, total)
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    g_ok = offs_g < G
    d_ok = offs_d < D
    q_mask = g_ok[:, None] & d_ok[None, :]
    t = start
    while t < end:
        pair = t // cap_tiles
        tile_lo = t - pair * cap_tiles
        tile_hi = tl.minimum(cap_tiles, tile_lo + (end - t))
        row = (pair // KV).to(tl.int64)
        kvh = pair % KV
        length = tl.load(LENGTHS + row).to(tl.int32)
        hi = tl.minimum(tile_hi, tl.cdiv(length, BLOCK_N))
        heads = kvh * G + offs_g
        q = tl.load(Q + row * sq_b + heads[:, None] * sq_h + offs_d[None, :], mask=q_mask,
                    other=0.0)
        k_base = K + row * sk_b + kvh * sk_h
        v_base = V + row * sv_b + kvh * sv_h
        m_i = tl.full([G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, BLOCK_D], tl.float32)
        for tile in range(tile_lo, hi):
            slots = tile * BLOCK_N + offs_n
            seen = slots < length
            kv_mask = seen[:, None] & d_ok[None, :]
            k = tl.load(k_base + slots[:, None] * sk_n + offs_d[None, :], mask=kv_mask,
                        other=0.0)
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
            v = tl.load(v_base + slots[:, None] * sv_n + offs_d[None, :], mask=kv_mask,
                        other=0.0)
            if DOT_F32:
                pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32),
                            input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        has = l_i > 0.0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
        k_idx = pid - (pair * cap_tiles) // W
        tl.store(PART + row * sp_b + heads[:, None] * sp_h + k_idx * sp_k + offs_d[None, :],
                 out, mask=q_mask)
        tl.store(LSE + row * sl_b + heads * sl_h + k_idx, lse, mask=g_ok)
        t = pair * cap_tiles + tile_hi


@triton.jit
def _merge_stream_body(
    PART, LSE, OUT, W, cap_tiles, sp_b, sp_h, sp_k, sl_b, sl_h, so_b, so_h,
    HEADS: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    K_PAD: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // HEADS
    h = pid % HEADS
    pair = pid // G  # row * KV + h // G
    first = (pair * cap_tiles) // W
    count = (pair * cap_tiles + cap_tiles - 1) // W - first + 1
    offs_k = tl.arange(0, K_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    k_ok = offs_k < count
    d_ok = offs_d < D
    lse = tl.load(LSE + row * sl_b + h * sl_h + offs_k, mask=k_ok, other=float("-inf"))
    top = tl.max(lse, 0)
    w = tl.exp(lse - top)
    part = tl.load(PART + row * sp_b + h * sp_h + offs_k[:, None] * sp_k + offs_d[None, :],
                   mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)
    tl.store(OUT + row * so_b + h * so_h + offs_d, out.to(OUT.dtype.element_ty), mask=d_ok)


def stream_attention(q, k_cache, v_cache, lengths, scale, programs, block_n, warps, stages,
                     merge=True):
    """The stream-K attention: (out or None, partials) for q [b, heads, d]."""
    b, heads, d = q.shape
    _, kv, capacity, _ = k_cache.shape
    g = heads // kv
    cap_tiles = math.ceil(capacity / block_n)
    total = b * kv * cap_tiles
    w = math.ceil(total / programs)
    k_max = math.ceil(cap_tiles / w) + 1
    part = torch.empty(b, heads, k_max, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(b, heads, k_max, dtype=torch.float32, device=q.device)
    grid = (math.ceil(total / w),)
    _attn_stream_body[grid](
        q, k_cache, v_cache, lengths, part, lse, scale, w, total, cap_tiles,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        KV=kv, G=g, G_PAD=max(16, triton.next_power_of_2(g)), D=d,
        BLOCK_D=triton.next_power_of_2(d), BLOCK_N=block_n,
        DOT_F32=q.dtype == torch.float32, num_warps=warps, num_stages=stages)
    if not merge:
        return None
    out = torch.empty_like(q)
    _merge_stream_body[(b * heads,)](
        part, lse, out, w, cap_tiles, part.stride(0), part.stride(1), part.stride(2),
        lse.stride(0), lse.stride(1), out.stride(0), out.stride(1),
        HEADS=heads, G=g, D=d, BLOCK_D=triton.next_power_of_2(d),
        K_PAD=triton.next_power_of_2(k_max))
    return out


def rate(s: Shape, us: float, element_size: int) -> float:
    return kv_bytes(sum(row_lengths(s)), s.kv, s.d, element_size) / (us * 1e-6) / 1e12


def timed(fn, n: int = 10) -> float:
    return us_per_call([fn] * n, [fn] * 3, 20, 50)


STRIDE_TILES = [(64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 8, 2), (32, 4, 3)]


def stride_records() -> list[dict]:
    """The runtime's kernel (no RoPE, one split) at batch 64 over caches of several capacities
    (the stride between (row, kv head) regions) and base offsets, every row's length 2017..2048
    (the same bytes read in every case), each tile forced; then the autotuned call and its pick."""
    b, heads, kv, d = 64, 32, 8, 128
    g = heads // kv
    jit = triton.jit(dk._attn_partials_body, do_not_specialize=["gap_hi"])
    lengths = torch.tensor([2017 + 31 * i // (b - 1) for i in range(b)], device="cuda",
                           dtype=torch.int32)
    gap_lo = torch.zeros(b, device="cuda", dtype=torch.int32)
    nbytes = int(lengths.sum().item()) * kv * d * 2 * 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, heads, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    out = []

    def forced(kc, vc, o, bn, warps, stages):
        def call() -> torch.Tensor:
            jit[(b * kv, 1)](
                q, kc, vc, lengths, gap_lo, 0, o, o, d ** -0.5,
                q.stride(0), q.stride(1), *kc.stride()[:3], *vc.stride()[:3],
                o.stride(0), o.stride(1), 0, 0, 0, lengths, lengths, lengths, lengths, 0,
                KV=kv, G=g, G_PAD=16, D=d, BLOCK_D=d, BLOCK_N=bn, SPLITS=1, DOT_F32=False,
                WRITE_LSE=False, ROPE=False, num_warps=warps, num_stages=stages)
            return o
        return call

    for cap, offset in [(2048, 0), (2056, 0), (2064, 0), (2072, 0), (2080, 0), (2096, 0),
                        (2112, 0), (2144, 0), (2176, 0), (2304, 0), (2080, 128), (2080, 4096),
                        (2080, 65536), (2080, 1 << 20)]:
        n = b * kv * cap * d
        flat_k = torch.randn(n + offset, device="cuda", dtype=torch.bfloat16)
        flat_v = torch.randn(n + offset, device="cuda", dtype=torch.bfloat16)
        kc = flat_k[offset:].view(b, kv, cap, d)
        vc = flat_v[offset:].view(b, kv, cap, d)
        o = torch.empty(b, heads, d, device="cuda", dtype=torch.bfloat16)
        for bn, warps, stages in STRIDE_TILES:
            call = forced(kc, vc, o, bn, warps, stages)
            us = timed(call)
            rec = {"capacity": cap, "offset_elems": offset, "BLOCK_N": bn, "warps": warps,
                   "stages": stages, "us": us, "TBps": nbytes / us / 1e6}
            out.append(rec)
            print(rec, flush=True)
        del flat_k, flat_v, kc, vc
        torch.cuda.empty_cache()
    kc = torch.randn(b, kv, 2080, d, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn(b, kv, 2080, d, device="cuda", dtype=torch.bfloat16)
    fn = lambda: dk.flash_decode_triton(q, kc, vc, lengths, gap_lo, 0, d ** -0.5)
    us = timed(fn)
    best = getattr(dk._kernels()[0], "best_config", None)
    out.append({"capacity": 2080, "autotuned": str(best), "us": us, "TBps": nbytes / us / 1e6})
    print(out[-1], flush=True)
    return out


def pdl_records() -> list[dict]:
    """The runtime's kernel at batch 64 (tile forced to BLOCK_N 64, 4 warps, 2 stages; then
    autotuned), with and without RoPE fused, launched with and without PDL: alone (ten calls
    back to back in a graph), and after a q/k/v GEMM as in the step (the pair's time less the
    GEMM's alone)."""
    import os

    b, heads, kv, d, _ = ROPE_SHAPE
    g = heads // kv
    jit = triton.jit(dk._attn_partials_body, do_not_specialize=["gap_hi"])
    inp = rope_attention_inputs()
    qkv, kc, vc, lengths, gap_lo, pos, slot, cos, sin, nbytes = (
        inp[k] for k in ("qkv", "kc", "vc", "lengths", "gap_lo", "pos", "slot", "cos", "sin",
                         "kv_bytes"))
    x = torch.randn(b, 4096, device="cuda", dtype=torch.bfloat16)
    w_qkv = torch.randn(4096, (heads + 2 * kv) * d, device="cuda", dtype=torch.bfloat16)
    qkv_out = torch.empty(b, (heads + 2 * kv) * d, device="cuda", dtype=torch.bfloat16)
    o = torch.empty(b, heads, d, device="cuda", dtype=torch.bfloat16)
    out = []

    def gemm() -> None:
        torch.mm(x, w_qkv, out=qkv_out)

    def forced(rope: bool, pdl: bool):
        extra = {"PDL": True, "launch_pdl": True} if pdl else {}

        def call() -> torch.Tensor:
            jit[(b * kv, 1)](
                qkv, kc, vc, lengths, gap_lo, 2048, o, o, d ** -0.5,
                qkv.stride(0), qkv.stride(1), *kc.stride()[:3], *vc.stride()[:3],
                o.stride(0), o.stride(1), 0, 0, 0, cos, sin, pos, slot, cos.stride(0),
                KV=kv, G=g, G_PAD=16, D=d, BLOCK_D=d, BLOCK_N=64, SPLITS=1, DOT_F32=False,
                WRITE_LSE=False, ROPE=rope, num_warps=4, num_stages=2, **extra)
            return o
        return call

    def runtime(pdl: bool):
        def call() -> torch.Tensor:
            os.environ["PLANC_DECODE_PDL"] = "1" if pdl else "0"
            return dk.rope_flash_decode_triton(qkv, cos, sin, pos, slot, kc, vc, lengths,
                                               gap_lo, 2048, d ** -0.5, heads)
        return call

    cases = [("forced", False, False), ("forced", False, True), ("forced", True, False),
             ("forced", True, True), ("runtime", True, False), ("runtime", True, True)]
    gemm_us = []
    for rnd in range(3):
        gemm_us.append(timed(gemm))
        for kind, rope, pdl in cases:
            call = forced(rope, pdl) if kind == "forced" else runtime(pdl)
            alone = timed(call)

            def pair(call=call) -> None:
                gemm()
                call()
            with_gemm = timed(pair) - gemm_us[-1]
            rec = {"round": rnd, "kind": kind, "rope": rope, "pdl": pdl, "us_alone": alone,
                   "TBps_alone": nbytes / alone / 1e6, "us_after_gemm": with_gemm,
                   "TBps_after_gemm": nbytes / with_gemm / 1e6, "gemm_us": gemm_us[-1]}
            out.append(rec)
            print(rec, flush=True)
    best = getattr(dk._kernels()[0], "best_config", None)
    out.append({"autotuned": str(best)})
    print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--check-only", action="store_true", help="correctness at a small shape")
    ap.add_argument("--part", default="balance", choices=("balance", "stride", "pdl"))
    args = ap.parse_args()
    if args.part in ("stride", "pdl"):
        records = stride_records() if args.part == "stride" else pdl_records()
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                        "torch": torch.__version__,
                                        "triton": triton.__version__, "records": records},
                                       indent=1))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    records: list[dict] = []
    if args.check_only:  # e.g. TRITON_INTERPRET=1 on CPU
        s = Shape("small", 3, 8, 2, 16, 70, 5, 70)
        x = make_inputs(s, torch.float32, device)
        ref = reference_f32(x)
        for programs in (1, 2, 3, 5, 7, 13, 40):
            out = stream_attention(x["q"], x["k"], x["v"], x["lengths"], x["scale"], programs,
                                   16, 4, 2)
            err = (out - ref).abs().max().item()
            print(f"programs {programs}: max err {err:.2e}")
            assert err < 1e-4, err
        return
    bf = torch.bfloat16
    for b in (48, 49, 64, 66, 96, 99, 128):
        s = Shape(f"b{b}", b, 32, 8, 128, 2080, 2049, 2080)
        x = make_inputs(s, bf, device)
        fn = lambda x=x: dk.flash_decode_triton(x["q"], x["k"], x["v"], x["lengths"],
                                                x["gap_lo"], 0, x["scale"])
        us = timed(fn)
        rec = {"kind": "runtime", "b": b, "programs": b * 8, "us": us,
               "TBps": rate(s, us, 2)}
        records.append(rec)
        print(rec, flush=True)
        del x
        torch.cuda.empty_cache()
    s = Shape("b64", 64, 32, 8, 128, 2080, 2049, 2080)
    x = make_inputs(s, bf, device)
    ref = reference_f32(x)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for block_n, warps, stages in ((64, 4, 2), (64, 4, 3), (64, 8, 2), (32, 4, 3), (32, 4, 4),
                                   (128, 4, 2), (128, 8, 2)):
        for per_sm in (2, 3, 4, 6):
            programs = sms * per_sm
            args_ = (x["q"], x["k"], x["v"], x["lengths"], x["scale"], programs, block_n,
                     warps, stages)
            try:
                err = (stream_attention(*args_).float() - ref).abs().max().item()
                us_m = timed(lambda a=args_: stream_attention(*a))
                us_a = timed(lambda a=args_: stream_attention(*a, merge=False))
            except Exception as e:  # noqa: BLE001 - a config that does not compile is a result
                records.append({"kind": "stream", "block_n": block_n, "warps": warps,
                                "stages": stages, "programs": programs,
                                "error": f"{type(e).__name__}: {e}"[:300]})
                print(records[-1], flush=True)
                continue
            rec = {"kind": "stream", "b": 64, "block_n": block_n, "warps": warps,
                   "stages": stages, "programs": programs, "us_with_merge": us_m,
                   "us_attention_only": us_a, "TBps_with_merge": rate(s, us_m, 2),
                   "TBps_attention_only": rate(s, us_a, 2), "max_abs_err": err}
            records.append(rec)
            print(rec, flush=True)
    base = timed(lambda: dk.flash_decode_triton(x["q"], x["k"], x["v"], x["lengths"],
                                                x["gap_lo"], 0, x["scale"]))
    records.append({"kind": "runtime_again", "b": 64, "us": base, "TBps": rate(s, base, 2)})
    print(records[-1], flush=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                    "torch": torch.__version__, "triton": triton.__version__,
                                    "records": records}, indent=1))


if __name__ == "__main__":
    main()
