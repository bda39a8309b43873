"""Micro-benchmark: where a batch-64 decode layer's last microseconds go, each call timed inside a
CUDA graph (graph_timer) as the static decode step runs it.

Run on the GPU machine from the repository root (about 3 minutes):
    PYTHONPATH=$PWD python benchmarks/decode_splitk_h200.py --out $OUT/decode_splitk.json

Three questions, Llama-3-8B shapes, bf16:

1. GEMMs split over K by the caller (`bmm`): x [M, K] @ W [K, N] as S products over K / S each
   (torch.bmm of strided views, no copies) with float32 partials [S, M, N], against cuBLAS's one
   product (F.linear of the input-major weight, as the step runs it, its own split-K reduce
   kernel included where it picks one). Why: cuBLAS tiles q/k/v (N 6144) into 96 programs and
   gate/up (N 28672) into 112 at M = 64, on 132 SMs; split products give it more programs, and
   the partials' sum can be made by the kernel that reads the result anyway (the attention
   kernel, SiLU x up, the residual add + norm) instead of a kernel of its own. Each call reads a
   different weight of a ring larger than the L2 cache.
2. What summing S partials costs those consumers (torch.compile of the add + norm and of
   SiLU x up with S float32 partials, against the one bf16 input).
3. The attention kernel's tile at batch 64 (RoPE fused, the runtime's kernel): every forced
   (BLOCK_N, num_warps, num_stages) and splits 1 and 2, against the autotuner's pick; and a plain
   read of 1 GiB (a Triton sum kernel) as the rate a read reaches on this machine.

Run 18 timed questions 1-3, run 19 `--parts mlp` (decode_products.gate_up_silu over forced tiles
against cuBLAS's gate/up + SiLU x up). Run 23: `--parts attention --attention-sweep warps` (1 or
2 warps per attention program, BLOCK_N 16-64, 1-4 stages: none beat the autotuner's tile by more
than 0.6%) and `--parts gemm --triton-split` (a Triton split-K candidate for q/k/v, o_proj and
down_proj, `triton_split_linear`, on the input-major weight against cuBLAS and the bmm split: it
won on o_proj and on q/k/v at 1 and 8 rows, and is now the step's, decode_products.split_kernel).
Run 24: `--parts probe,attention --attention-sweep none` (the attention's access pattern as a
plain read, probe_records) and `--parts gemm --gemms lm_head --triton-split` (the lm_head's one
GEMM, cuBLAS against unsplit Triton tiles). In runs 23 and 24 the candidate's one-split timings
included a copy of its bf16 output into the float32 buffer; split_kernel now writes the float32
product itself. Run 25: `--parts prefetch` (prefetch_records: the attention's spare programs
reading o_proj's weight into L2 first). Run 35: `--parts deep_split` (the split products' tile
over deeper pipelines, 8 warps, BLOCK_K 256, BLOCK_N 32 and an output-major weight: none beat
the step's tile). Run 36 (`--parts mlp_cols` at commit 8ac2ae3): gate_up_silu's programs over
fewer columns than their tile, to spread 14336 columns over 128 programs instead of 112; 11%
slower, taken out. Run 37: `--parts norm_persistent` (the add + norm as inductor's persistent
reduction and as a hand-written one-pass kernel: all at 2.7 us).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

try:  # the kernels' annotations name tl; the GPU image and CI's torch bring triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    tl = None

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from graph_timer import us_per_call

from planc.backends.torch.runtime import decode_kernels as dk
from planc.backends.torch.runtime import layers

GEMMS = {"qkv": (4096, 6144), "o_proj": (4096, 4096), "gate_up": (4096, 28672),
         "down": (14336, 4096), "lm_head": (4096, 128256)}
SPLIT_GEMMS = ("qkv", "o_proj", "gate_up", "down")  # lm_head's partials would be 2 GB: whole
RING_BYTES = 600 * 2**20  # weights per ring: ten times the L2 cache
WARMUP, TIMED = 10, 30


def ring(k: int, n: int) -> list[torch.Tensor]:
    """Input-major weights [K, N] (contiguous), as many as fill RING_BYTES."""
    count = max(2, RING_BYTES // (k * n * 2))
    return [torch.randn(k, n, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(count)]


def split_product(x: torch.Tensor, w: torch.Tensor, s: int, f32: bool) -> torch.Tensor:
    """[S, M, N] partials of x @ w over S slices of K (views, no copies)."""
    m, k = x.shape
    xs = x.view(m, s, k // s).transpose(0, 1)
    ws = w.view(s, k // s, w.shape[1])
    return torch.bmm(xs, ws, out_dtype=torch.float32) if f32 else torch.bmm(xs, ws)


def ring_us(fn: object, ws: list[torch.Tensor]) -> float:
    """Microseconds per call of fn over the ring's weights, one call per weight in the graph."""
    calls = [lambda w=w: fn(w) for w in ws]  # type: ignore[operator]
    return us_per_call(calls, calls[:1], WARMUP, TIMED)


def triton_split_linear(x: torch.Tensor, w_kn: torch.Tensor, cfg: dict) -> torch.Tensor:
    """[S, M, N] float32 partials of x [M, K] @ w_kn [K, N] (the contract of
    decode_products.split_product) by its Triton path, decode_products.split_kernel, on the
    input-major weight with the tile cfg forced (run 23 timed it as a candidate before planc's
    step ran it)."""
    from planc.backends.torch.runtime import decode_products

    cfg = dict(cfg)
    return decode_products.split_kernel(x, w_kn.t(), cfg.pop("SPLITS"), cfg)


TRITON_SPLIT_TILES = [  # (SPLITS, BLOCK_N, BLOCK_K, num_warps, num_stages): run 23
    (s, n, k, 4, st) for s in (1, 2, 4) for n in (64, 128) for k in (64, 128) for st in (3, 4)]


DEEP_SPLIT_TILES = [  # (SPLITS, BLOCK_N, BLOCK_K, num_warps, num_stages): run 35
    (s, n, k, w, st) for s in (2, 4) for n in (32, 64, 128) for k in (128, 256) for w in (4, 8)
    for st in (4, 6)]


def deep_split_records(names: tuple[str, ...] = ("o_proj", "down"), m: int = 64) -> list[dict]:
    """Run 35: the step's Triton split (decode_products.split_kernel) at 64 rows over deeper
    pipelines, 8 warps, BLOCK_K 256 and BLOCK_N 32 (run 23 timed 4 warps, 3-4 stages and
    BLOCK_K 64-128 only, and 4 stages beat 3 everywhere), on the input-major weight the step
    keeps and on an output-major [N, K] copy, against the step's tile and cuBLAS."""
    from planc.backends.torch.runtime import decode_products

    out = []
    for name in names:
        k, n = GEMMS[name]
        ws_in = ring(k, n)
        ws_out = [w.t().contiguous() for w in ws_in]  # [N, K]
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ ws_in[0].float()
        step = decode_products.split_config(m)
        tiles = [("step", 2, step["BLOCK_N"], step["BLOCK_K"], step["num_warps"],
                  step["num_stages"])] + [("deep", *t) for t in DEEP_SPLIT_TILES]
        variants: dict[str, tuple] = {"cublas": (lambda w, x=x: F.linear(x, w.t()), ws_in)}
        for layout, ws in (("in", ws_in), ("out", ws_out)):
            for tag, sk, bn, bk, warps, stages in tiles:
                cfg = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}

                def call(w, cfg=cfg, sk=sk, layout=layout, x=x):
                    return decode_products.split_kernel(x, w.t() if layout == "in" else w, sk,
                                                        dict(cfg))
                variants[f"{layout}_{tag}_s{sk}_n{bn}_k{bk}_w{warps}_st{stages}"] = (call, ws)
        for v, (fn, ws) in variants.items():
            rec = {"part": "deep_split", "gemm": name, "M": m, "K": k, "N": n, "variant": v}
            try:
                y = fn(ws[0])
                y = y.float().sum(0) if y.dim() == 3 else y.float()
                err = ((y - ref).abs().max() / ref.abs().max()).item()
                us = ring_us(fn, ws)
            except Exception as e:  # noqa: BLE001 - out of shared memory, etc.
                out.append({**rec, "error": f"{type(e).__name__}: {e}"[:200]})
                continue
            out.append({**rec, "us": us, "TBps": k * n * 2 / us / 1e6, "rel_err": err})
            print(f"{name:7} M={m} {v:36} {us:8.2f} us {k * n * 2 / us / 1e6:5.2f} TB/s "
                  f"err {err:.1e}", flush=True)
        del ws_in, ws_out
        torch.cuda.empty_cache()
    return out


def gemm_records(triton_split: bool = False, names: tuple[str, ...] = SPLIT_GEMMS
                 ) -> list[dict]:
    out = []
    for name in names:
        k, n = GEMMS[name]
        ws = ring(k, n)
        for m in (64, 8, 1):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = (x.float() @ ws[0].float())
            variants = {"cublas": lambda w, x=x: F.linear(x, w.t()),
                        "mm_out_f32": lambda w, x=x: torch.mm(x, w, out_dtype=torch.float32)}
            for s in (2, 3, 4, 8):
                if k % (s * 64) == 0 and name in SPLIT_GEMMS:
                    variants[f"bmm_s{s}_f32"] = lambda w, s=s, x=x: split_product(x, w, s, True)
                    if s in (2, 4):
                        variants[f"bmm_s{s}_bf16"] = \
                            lambda w, s=s, x=x: split_product(x, w, s, False)
            if triton_split and name != "gate_up":
                for sk, bn, bk, warps, stages in TRITON_SPLIT_TILES:
                    if sk > 1 and name not in SPLIT_GEMMS:
                        continue
                    cfg = {"SPLITS": sk, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps,
                           "num_stages": stages}
                    variants[f"triton_s{sk}_n{bn}_k{bk}_w{warps}_st{stages}"] = \
                        lambda w, x=x, cfg=cfg: triton_split_linear(x, w, cfg)
            for v, fn in variants.items():
                rec = {"part": "gemm", "gemm": name, "M": m, "K": k, "N": n, "variant": v}
                try:
                    y = fn(ws[0])
                    y = y.float().sum(0) if y.dim() == 3 else y.float()
                    err = ((y - ref).abs().max() / ref.abs().max()).item()
                    us = ring_us(fn, ws)
                except Exception as e:  # noqa: BLE001 - a variant that fails is a result
                    out.append({**rec, "error": f"{type(e).__name__}: {e}"[:300]})
                    continue
                out.append({**rec, "us": us, "TBps": k * n * 2 / us / 1e6, "rel_err": err})
                print(f"gemm {name:8} M={m:<3} {v:14} {us:8.2f} us {k*n*2/us/1e6:5.2f} TB/s "
                      f"err {err:.1e}", flush=True)
        del ws
        torch.cuda.empty_cache()
    return out


def _add_norm_parts(x: torch.Tensor, parts: torch.Tensor, w: torch.Tensor, eps: float
                    ) -> torch.Tensor:
    """The add + norm of layers' fused form, its addend the sum of float32 partials rounded
    once to x's dtype."""
    return layers._add_norm_fused(x, parts.sum(0).to(x.dtype), w, eps)


def _silu_mul_parts(parts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return layers._silu_mul_fused(parts.sum(0).to(dtype))


def consumer_records() -> list[dict]:
    c = layers.compiled_elementwise()
    opts = {"emulate_precision_casts": True}
    add_parts = torch.compile(_add_norm_parts, dynamic=False, fullgraph=True, options=opts)
    silu_parts = torch.compile(_silu_mul_parts, dynamic=False, fullgraph=True, options=opts)
    out = []
    m, hidden, ffn = 64, 4096, 14336
    x = torch.randn(m, 1, hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(hidden, device="cuda", dtype=torch.bfloat16)
    o = torch.randn_like(x)
    gu = torch.randn(m, 1, 2 * ffn, device="cuda", dtype=torch.bfloat16)
    cases = {"add_norm": lambda: c.add_norm(x, o, w, 1e-5),
             "silu_mul": lambda: c.silu_mul(gu)}
    for s in (2, 4, 8):
        p = torch.randn(s, m, 1, hidden, device="cuda", dtype=torch.float32)
        cases[f"add_norm_parts_s{s}"] = lambda p=p: add_parts(x, p, w, 1e-5)
    for s in (2, 4):
        p = torch.randn(s, m, 1, 2 * ffn, device="cuda", dtype=torch.float32)
        cases[f"silu_mul_parts_s{s}"] = lambda p=p: silu_parts(p, torch.bfloat16)
    for name, fn in cases.items():
        try:
            us = us_per_call([fn] * 8, [fn, fn], WARMUP, TIMED)
        except Exception as e:  # noqa: BLE001
            out.append({"part": "consumer", "case": name, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        out.append({"part": "consumer", "case": name, "us": us})
        print(f"consumer {name:20} {us:8.2f} us", flush=True)
    return out


def _add_parts_norm_triton():
    """A hand-written add + norm over S float32 partials (run 37's candidate): one program per
    row holds the whole row (hidden <= BLOCK) in registers, one read of each input."""
    import triton
    import triton.language as tl

    @triton.jit
    def body(X, P, W, Y, s_p, eps, N: tl.constexpr, BLOCK: tl.constexpr,
             PARTS: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        ok = offs < N
        acc = tl.zeros([BLOCK], tl.float32)
        for s in tl.static_range(PARTS):
            acc += tl.load(P + s * s_p + row * N + offs, mask=ok, other=0.0)
        dt = X.dtype.element_ty
        x = tl.load(X + row * N + offs, mask=ok, other=0.0)
        h = (x.to(tl.float32) + acc.to(dt).to(tl.float32)).to(dt)
        tl.store(X + row * N + offs, h, mask=ok)
        hf = h.to(tl.float32)
        r = tl.rsqrt(tl.sum(hf * hf, 0) / N + eps)
        w = tl.load(W + offs, mask=ok, other=0.0)
        y = (w.to(tl.float32) * (hf * r).to(dt).to(tl.float32)).to(dt)
        tl.store(Y + row * N + offs, y, mask=ok)

    def call(x, parts, w, eps, warps):
        n = x.shape[-1]
        rows = x.numel() // n
        y = torch.empty_like(x)
        body[(rows,)](x, parts, w, y, parts.stride(0), eps, N=n,
                      BLOCK=triton.next_power_of_2(n), PARTS=parts.shape[0], num_warps=warps)
        return y
    return call


def norm_persistent_records(rounds: int = 3) -> list[dict]:
    """Run 37: the step's add + norm over 2 float32 partials at 64 rows (inductor's looped
    reduction, two passes over the row, as torch.compile makes it for hidden 4096 > its
    persistent-reduction threshold of 1024) against inductor forced to a persistent reduction
    (its choices handler) and a hand-written one-pass Triton kernel; the outputs compared."""
    from torch._inductor.choices import InductorChoices
    from torch._inductor.virtualized import V

    class Persistent(InductorChoices):
        @staticmethod
        def should_use_persistent_reduction(features, cooperative_reduction) -> bool:
            return True

    opts = {"emulate_precision_casts": True}
    step = layers.compiled_elementwise().add_parts_norm
    persistent = torch.compile(_add_norm_parts, dynamic=False, fullgraph=True, options=opts)
    hand = _add_parts_norm_triton()
    m, hidden = 64, 4096
    x0 = torch.randn(m, 1, hidden, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(hidden, device="cuda") * 0.1 + 1).to(torch.bfloat16)
    p = torch.randn(2, m, 1, hidden, device="cuda", dtype=torch.float32)
    xs = {k: x0.clone() for k in ("step", "persistent", "hand4", "hand8", "hand16")}
    fns = {"step": lambda: step(xs["step"], p, w, 1e-5)}
    with V.set_choices_handler(Persistent()):
        persistent(xs["persistent"], p, w, 1e-5)  # compiles under the handler
    fns["persistent"] = lambda: persistent(xs["persistent"], p, w, 1e-5)
    for warps in (4, 8, 16):
        fns[f"hand{warps}"] = lambda warps=warps: hand(xs[f"hand{warps}"], p, w, 1e-5, warps)
    # one call each from the same x: outputs and the updated residual against the step's
    for v in xs.values():
        v.copy_(x0)
    outs = {k: fn() for k, fn in fns.items()}
    out = []
    for k in fns:
        out.append({"part": "norm_persistent", "case": k,
                    "out_equal_step": bool(torch.equal(outs[k], outs["step"])),
                    "residual_equal_step": bool(torch.equal(xs[k], xs["step"])),
                    "out_max_abs_diff": (outs[k].float() - outs["step"].float()).abs().max().item()})
        print(out[-1], flush=True)
    for rnd in range(rounds):
        for k, fn in fns.items():
            us = us_per_call([fn] * 8, [fn, fn], WARMUP, TIMED)
            out.append({"part": "norm_persistent", "case": k, "round": rnd, "us": us})
            print(f"norm {k:12} round {rnd} {us:8.2f} us", flush=True)
    return out


ATTENTION_SWEEPS = {
    # run 18: (splits, BLOCK_N, num_warps, num_stages)
    "run18": [(s, n, w, st) for s in (1, 2) for n in (32, 64, 128) for w in (4, 8)
              for st in (2, 3, 4)],
    # fewer warps per program (more programs resident per SM) and shallower or deeper
    # pipelines, one split: not timed yet
    "warps": [(1, n, w, st) for n in (16, 32, 64) for w in (1, 2) for st in (1, 2, 3, 4)],
    "none": [],  # the runtime's kernel alone (autotuned), as a peer for --parts probe
}


ROPE_SHAPE = (64, 32, 8, 128, 2080)  # batch, heads, kv heads, head_dim, cache capacity


def rope_attention_inputs() -> dict:
    """The batch-64 step's attention inputs (RoPE fused): the unrotated q/k/v output, the
    caches, lengths 2049..2080 with an empty gap at 2048, the new token's slot, cos / sin, and
    the KV bytes the call reads."""
    b, heads, kv, d, cap = ROPE_SHAPE
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = {"qkv": torch.randn(b, heads + 2 * kv, d, device="cuda", dtype=torch.bfloat16,
                            generator=gen),
         "kc": torch.randn(b, kv, cap, d, device="cuda", dtype=torch.bfloat16, generator=gen),
         "vc": torch.randn(b, kv, cap, d, device="cuda", dtype=torch.bfloat16, generator=gen),
         "lengths": torch.tensor([2049 + 31 * i // (b - 1) for i in range(b)], device="cuda",
                                 dtype=torch.int32),
         "gap_lo": torch.full((b,), 2048, device="cuda", dtype=torch.int64),
         "slot": torch.tensor([2060], device="cuda"),
         "cos": torch.randn(cap, d // 2, device="cuda", dtype=torch.bfloat16),
         "sin": torch.randn(cap, d // 2, device="cuda", dtype=torch.bfloat16)}
    x["pos"] = x["lengths"].long() - 1
    x["kv_bytes"] = int(x["lengths"].sum().item()) * kv * d * 2 * 2
    return x


def attention_records(sweep: str = "run18") -> list[dict]:
    import triton

    b, heads, kv, d, _ = ROPE_SHAPE
    g = heads // kv
    x = rope_attention_inputs()
    qkv, kc, vc, lengths, gap_lo, pos, slot, cos, sin, kv_bytes = (
        x[k] for k in ("qkv", "kc", "vc", "lengths", "gap_lo", "pos", "slot", "cos", "sin",
                       "kv_bytes"))
    out = []

    def runtime() -> torch.Tensor:
        return dk.rope_flash_decode_triton(qkv, cos, sin, pos, slot, kc, vc, lengths, gap_lo,
                                           2048, d ** -0.5, heads)

    ref = runtime().float()
    us = us_per_call([runtime] * 8, [runtime, runtime], WARMUP, TIMED)
    tuned = dk._kernels()[0]
    best = getattr(tuned, "best_config", None)
    timings = {str(c): t for c, t in (getattr(tuned, "configs_timings", None) or {}).items()}
    out.append({"part": "attention", "variant": "runtime (autotuned)", "us": us,
                "TBps": kv_bytes / us / 1e6, "best_config": str(best),
                "autotune_timings": timings})
    print(f"attention runtime {us:8.2f} us {kv_bytes/us/1e6:5.2f} TB/s best {best}", flush=True)

    jit = triton.jit(dk._attn_partials_body, do_not_specialize=["gap_hi"])
    merge = dk._kernels()[1]
    for splits, bn, warps, stages in ATTENTION_SWEEPS[sweep]:
        o = torch.empty(b, heads, d, device="cuda", dtype=torch.bfloat16)
        if splits == 1:
            part, lse = o.unsqueeze(2), o.new_empty(1, dtype=torch.float32)
        else:
            part = torch.empty(b, heads, splits, d, device="cuda",
                               dtype=torch.float32)
            lse = torch.empty(b, heads, splits, device="cuda", dtype=torch.float32)

        def call(part=part, lse=lse, o=o, splits=splits, bn=bn, warps=warps,
                 stages=stages) -> torch.Tensor:
            jit[(b * kv, splits)](
                qkv, kc, vc, lengths, gap_lo, 2048, part, lse, d ** -0.5,
                qkv.stride(0), qkv.stride(1), *kc.stride()[:3], *vc.stride()[:3],
                part.stride(0), part.stride(1), part.stride(2),
                *((lse.stride(0), lse.stride(1)) if splits > 1 else (0, 0)),
                cos, sin, pos, slot, cos.stride(0),
                KV=kv, G=g, G_PAD=16, D=d, BLOCK_D=d, BLOCK_N=bn, SPLITS=splits,
                DOT_F32=False, WRITE_LSE=splits > 1, ROPE=True,
                num_warps=warps, num_stages=stages)
            if splits > 1:
                merge[(b * heads,)](
                    part, lse, o, part.stride(0), part.stride(1), part.stride(2),
                    lse.stride(0), lse.stride(1), o.stride(0), o.stride(1),
                    HEADS=heads, D=d, BLOCK_D=d, SPLITS=splits, S_PAD=splits)
            return o
        rec = {"part": "attention", "variant": f"s{splits} n{bn} w{warps} st{stages}"}
        try:
            err = (call().float() - ref).abs().max().item()
            us = us_per_call([call] * 8, [call, call], WARMUP, TIMED)
        except Exception as e:  # noqa: BLE001 - out of shared memory, etc.
            out.append({**rec, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        out.append({**rec, "us": us, "TBps": kv_bytes / us / 1e6, "err": err})
        print(f"attention {rec['variant']:18} {us:8.2f} us "
              f"{kv_bytes/us/1e6:5.2f} TB/s err {err:.1e}", flush=True)
    return out


PROBE_TILES = [(64, 4, 2), (32, 4, 3), (64, 4, 3), (128, 8, 2)]  # (BLOCK_N, warps, stages)


PROBE_SHAPE = (64, 32, 8, 128)  # batch 64, 32 query heads, 8 kv heads of 128


def probe_inputs() -> tuple[torch.Tensor, ...]:
    """q [b, heads, d], K and V caches [b, kv, 2080, d] (bf16) and lengths 2049..2080."""
    b, heads, kv, d = PROBE_SHAPE
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, heads, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    kc = torch.randn(b, kv, 2080, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    vc = torch.randn(b, kv, 2080, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    lengths = torch.tensor([2049 + 31 * i // (b - 1) for i in range(b)], device="cuda",
                           dtype=torch.int32)
    return q, kc, vc, lengths


def probe_records() -> list[dict]:
    """Where the batch-64 attention's last 7% goes (run 23: 4.15 TB/s against a plain read's
    4.45, whatever its tile): a stripped-down kernel with the runtime's access pattern (one
    program per (row, kv head), K and V tiles of the same [b, kv, capacity, d] caches, no RoPE,
    no gap), as the attention (ATTN: the two dots and the online softmax) or as a plain read of
    the same tiles (their sum); the row's tiles in one masked loop as the runtime walks them, or
    the whole tiles first without masks (SPLIT_LOOP); loads with or without
    eviction_policy="evict_first" (EVICT). If the plain read of this pattern is as slow as the
    attention, the pattern bounds it, not the kernel's arithmetic."""
    _probe = probe_kernel()
    b, heads, kv, d = PROBE_SHAPE
    q, kc, vc, lengths = probe_inputs()
    kv_bytes = int(lengths.sum().item()) * kv * d * 2 * 2
    o = torch.empty_like(q)
    ref = None
    out = []
    for attn in (True, False):
        for split_loop in (False, True):
            for evict in ("", "evict_first"):
                for bn, warps, stages in PROBE_TILES:
                    def call(attn=attn, split_loop=split_loop, evict=evict, bn=bn,
                             warps=warps, stages=stages) -> torch.Tensor:
                        _probe[(b * kv,)](q, kc, vc, lengths, o, q.stride(0), q.stride(1),
                                          *kc.stride()[:3], d ** -0.5, o, o, b * kv, 0,
                                          KV=kv, G=heads // kv,
                                          G_PAD=16, D=d, BLOCK_N=bn, ATTN=attn,
                                          SPLIT_LOOP=split_loop, EVICT=evict,
                                          num_warps=warps, num_stages=stages)
                        return o
                    rec = {"part": "probe", "attn": attn, "split_loop": split_loop,
                           "evict": evict or "default", "BLOCK_N": bn, "num_warps": warps,
                           "num_stages": stages}
                    try:
                        res = call().float()
                        err = None
                        if attn:
                            ref = res if ref is None else ref
                            err = (res - ref).abs().max().item()
                        us = us_per_call([call] * 8, [call, call], WARMUP, TIMED)
                    except Exception as e:  # noqa: BLE001 - out of resources, etc.
                        out.append({**rec, "error": f"{type(e).__name__}: {e}"[:200]})
                        continue
                    out.append({**rec, "us": us, "TBps": kv_bytes / us / 1e6, "err": err})
                    print(f"probe attn={attn:d} split={split_loop:d} {evict or 'default':11} "
                          f"n{bn} w{warps} st{stages} {us:8.2f} us {kv_bytes/us/1e6:5.2f} TB/s",
                          flush=True)
    return out



def prefetch_records() -> list[dict]:
    """Whether the attention can bring o_proj's weight into L2 for free: the attention's access
    pattern reads at 4.1-4.2 TB/s (probe_records, run 24), below the 4.45 TB/s of a plain read,
    and o_proj's 33.5 MB GEMM reads at about 3 TB/s (run 23). Timed per (attention, o_proj) pair
    of the batch-64 layer, each pair on another o_proj weight of a ring larger than L2: the
    attention as probe_records' kernel (one masked loop, BLOCK_N 64, 4 warps, 2 stages) with P
    more programs that read the next o_proj weight into L2 (evict_last), its K/V loads with or
    without evict_first; P = 0 is today's order."""
    _probe = probe_kernel()
    (b, heads, kv, d), hidden = PROBE_SHAPE, 4096
    q, kc, vc, lengths = probe_inputs()
    o = torch.empty_like(q)
    sink = torch.zeros(1, device="cuda")
    ws = [w.t() for w in ring(hidden, hidden)]  # [out, in] views, as F.linear takes them
    x = torch.randn(b, hidden, device="cuda", dtype=torch.bfloat16)
    numel = ws[0].numel()
    out = []

    def attention(w: torch.Tensor, progs: int, evict: str) -> None:
        per = numel // max(progs, 1) // 4096 * 4096  # whole blocks, none past W's end
        _probe[(b * kv + progs,)](q, kc, vc, lengths, o, q.stride(0), q.stride(1),
                                  *kc.stride()[:3], d ** -0.5, w, sink, b * kv, per,
                                  KV=kv, G=heads // kv, G_PAD=16, D=d, BLOCK_N=64, ATTN=True,
                                  SPLIT_LOOP=False, EVICT=evict, num_warps=4, num_stages=2)

    alone = ring_us(lambda w: F.linear(x, w), ws)
    out.append({"part": "prefetch", "variant": "o_proj alone", "us": alone})
    print(f"prefetch o_proj alone {alone:8.2f} us", flush=True)
    for evict in ("", "evict_first"):
        for progs in (0, 66, 132, 264):
            pair = ring_us(lambda w, p=progs, e=evict: (attention(w, p, e), F.linear(x, w)), ws)
            att = ring_us(lambda w, p=progs, e=evict: attention(w, p, e), ws)
            rec = {"part": "prefetch", "evict": evict or "default", "programs": progs,
                   "pair_us": pair, "attention_us": att}
            out.append(rec)
            print(f"prefetch {evict or 'default':11} P={progs:<4} pair {pair:8.2f} us "
                  f"attention {att:8.2f} us", flush=True)
    return out

def probe_kernel():  # type: ignore[no-untyped-def]
    """probe_records' kernel, jitted on first use (as runtime/decode_kernels builds its own): at
    module level, so that Triton's interpreter, which runs a kernel's source with its module's
    globals, finds the tile function it calls (tests run it on the CPU)."""
    import triton

    global _probe_tile, _probe_prefetch
    _probe_tile = triton.jit(_probe_tile_body)
    _probe_prefetch = triton.jit(_probe_prefetch_body)
    return triton.jit(_probe_body)


_probe_tile = _probe_prefetch = None  # probe_kernel sets them


def _probe_tile_body(q, k_ptrs, v_ptrs, seen, m_i, l_i, acc, scale, MASKED: tl.constexpr,
          ATTN: tl.constexpr, EVICT: tl.constexpr):
    if MASKED:
        k = tl.load(k_ptrs, mask=seen[:, None], other=0.0, eviction_policy=EVICT)
        v = tl.load(v_ptrs, mask=seen[:, None], other=0.0, eviction_policy=EVICT)
    else:
        k = tl.load(k_ptrs, eviction_policy=EVICT)
        v = tl.load(v_ptrs, eviction_policy=EVICT)
    if ATTN:
        s = tl.dot(q, tl.trans(k)) * scale
        if MASKED:
            s = tl.where(seen[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    else:
        acc += tl.sum(k.to(tl.float32) + v.to(tl.float32), 0)[None, :]
    return m_i, l_i, acc


def _probe_body(Q, K, V, LENGTHS, OUT, sq_b, sq_h, sk_b, sk_h, sk_n, scale,
                W, SINK, num_attn, w_per,
                KV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
                BLOCK_N: tl.constexpr, ATTN: tl.constexpr, SPLIT_LOOP: tl.constexpr,
                EVICT: tl.constexpr):
    """Programs below num_attn: one (row, kv head) each; the rest (prefetch_records) read
    w_per elements each of W with eviction_policy="evict_last", so that W is in L2 for the
    GEMM after."""
    pid = tl.program_id(0)
    if pid >= num_attn:
        _probe_prefetch(W, SINK, (pid - num_attn).to(tl.int64) * w_per, w_per)
    else:
        row = (pid // KV).to(tl.int64)
        kvh = pid % KV
        length = tl.load(LENGTHS + row).to(tl.int32)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        offs_g = tl.arange(0, G_PAD)
        heads = kvh * G + offs_g
        q = tl.load(Q + row * sq_b + heads[:, None] * sq_h + offs_d[None, :],
                    mask=(offs_g < G)[:, None], other=0.0)
        k_base = K + row * sk_b + kvh * sk_h
        v_base = V + row * sk_b + kvh * sk_h
        m_i = tl.full([G_PAD], -1.0e30, tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        n_full = length // BLOCK_N if SPLIT_LOOP else 0
        for t in range(n_full):
            slots = t * BLOCK_N + offs_n
            off = slots[:, None] * sk_n + offs_d[None, :]
            m_i, l_i, acc = _probe_tile(q, k_base + off, v_base + off, slots < length, m_i, l_i,
                                  acc, scale, False, ATTN, EVICT)
        for t in range(n_full, tl.cdiv(length, BLOCK_N)):
            slots = t * BLOCK_N + offs_n
            off = slots[:, None] * sk_n + offs_d[None, :]
            m_i, l_i, acc = _probe_tile(q, k_base + off, v_base + off, slots < length, m_i, l_i,
                                  acc, scale, True, ATTN, EVICT)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(OUT + row * sq_b + heads[:, None] * sq_h + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=(offs_g < G)[:, None])



def _probe_prefetch_body(W, SINK, start, per):
    block: tl.constexpr = 4096
    offs = tl.arange(0, block)
    acc = tl.zeros([block], tl.float32)
    for i in range(0, per, block):
        acc += tl.load(W + start + i + offs, eviction_policy="evict_last").to(tl.float32)
    total = tl.sum(acc, 0) + acc * 0.0  # as a vector: the interpreter's masks are arrays
    # stored never (no sum is exactly this), but the compiler cannot drop the loads
    tl.store(SINK + offs * 0, total, mask=(offs == 0) & (total == 1.2345e-37))

def read_records() -> list[dict]:
    """A plain read: a Triton kernel summing 1 GiB of bf16 (each program a contiguous chunk)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _sum(X, OUT, per, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        acc = tl.zeros([BLOCK], tl.float32)
        base = X + pid.to(tl.int64) * per
        for i in range(0, per, BLOCK):
            acc += tl.load(base + i + tl.arange(0, BLOCK)).to(tl.float32)
        tl.store(OUT + pid, tl.sum(acc, 0))

    n = 2**29
    x = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    out = []
    for progs in (132, 264, 528, 1056, 2112):
        for block in (1024, 4096):
            per = n // progs // block * block
            res = torch.empty(progs, device="cuda", dtype=torch.float32)
            for warps in (4, 8):
                fn = lambda progs=progs, per=per, res=res, block=block, warps=warps: _sum[(progs,)](
                    x, res, per, BLOCK=block, num_warps=warps)
                us = us_per_call([fn] * 4, [fn], 3, 10)
                tbps = progs * per * 2 / us / 1e6
                out.append({"part": "read", "programs": progs, "block": block, "warps": warps,
                            "us": us, "TBps": tbps})
                print(f"read progs {progs:5} block {block} w{warps} {tbps:5.2f} TB/s", flush=True)
    copy_dst = torch.empty_like(x)
    us = us_per_call([lambda: copy_dst.copy_(x)] * 4, [lambda: copy_dst.copy_(x)], 3, 10)
    out.append({"part": "read", "variant": "copy_ (read + write)", "us": us,
                "TBps": 2 * n * 2 / us / 1e6})
    print(f"copy {2*n*2/us/1e6:5.2f} TB/s", flush=True)
    return out


def mlp_records() -> list[dict]:
    """decode_products.gate_up_silu (one Triton kernel) over forced tiles against cuBLAS's gate/up
    GEMM followed by the compiled SiLU x up, each call on another weight of a ring."""
    from planc.backends.torch.runtime import decode_products

    hidden, ffn = 4096, 14336
    ws = [w.t() for w in ring(hidden, 2 * ffn)]  # [2 ffn, hidden], strides (1, 2 ffn)
    silu_mul = layers.compiled_elementwise().silu_mul
    out = []
    for m in (64, 8, 1):
        x = torch.randn(m, 1, hidden, device="cuda", dtype=torch.bfloat16)
        ref = decode_products.gate_up_silu_eager(x, ws[0]).float()
        base = ring_us(lambda w, x=x: silu_mul(F.linear(x, w)), ws)
        out.append({"part": "mlp", "M": m, "variant": "cublas + silu_mul", "us": base})
        print(f"mlp M={m:<3} cublas + silu_mul {base:8.2f} us", flush=True)
        m_pad = max(16, 1 << (m - 1).bit_length())
        for bn in (32, 64, 128):
            for bk in (64, 128, 256):
                for warps in (4, 8):
                    for stages in (3, 4, 5, 6):
                        if stages * (m_pad * bk + 2 * bk * bn) * 2 > 220 * 1024:
                            continue
                        if m > 1 and bk == 256:
                            continue
                        cfg = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps,
                               "num_stages": stages}
                        rec = {"part": "mlp", "M": m, "variant": "gate_up_silu", **cfg}
                        try:
                            fn = lambda w, x=x, cfg=cfg: decode_products.gate_up_silu(x, w, cfg)
                            err = ((fn(ws[0]).float() - ref).abs().max()
                                   / ref.abs().max()).item()
                            us = ring_us(fn, ws)
                        except Exception as e:  # noqa: BLE001 - out of resources, etc.
                            out.append({**rec, "error": f"{type(e).__name__}: {e}"[:200]})
                            continue
                        out.append({**rec, "us": us, "rel_err": err})
                        print(f"mlp M={m:<3} n{bn} k{bk} w{warps} st{stages} {us:8.2f} us "
                              f"err {err:.1e}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", default="read,attention,consumer,gemm,mlp",
                    help="any of read, probe, prefetch, attention, consumer, gemm, mlp, "
                         "deep_split, norm_persistent")
    ap.add_argument("--attention-sweep", default="run18", choices=sorted(ATTENTION_SWEEPS))
    ap.add_argument("--gemms", default=",".join(SPLIT_GEMMS),
                    help=f"gemm part: which of {', '.join(GEMMS)}")
    ap.add_argument("--triton-split", action="store_true",
                    help="gemm part: also the Triton split-K candidate over TRITON_SPLIT_TILES")
    args = ap.parse_args()
    parts = args.parts.split(",")
    records: list[dict] = []
    for name, fn in (("read", read_records), ("probe", probe_records),
                     ("prefetch", prefetch_records),
                     ("attention", lambda: attention_records(args.attention_sweep)),
                     ("consumer", consumer_records),
                     ("gemm", lambda: gemm_records(args.triton_split, tuple(args.gemms.split(",")))),
                     ("mlp", mlp_records), ("deep_split", deep_split_records),
                     ("norm_persistent", norm_persistent_records)):
        if name in parts:
            records += fn()
            args.out.write_text(json.dumps(result(records), indent=1))
    args.out.write_text(json.dumps(result(records), indent=1))


def result(records: list[dict]) -> dict:
    import triton
    return {"machine": {"torch": torch.__version__, "triton": triton.__version__,
                        "gpu": torch.cuda.get_device_name(), "python": platform.python_version()},
            "records": records}


if __name__ == "__main__":
    main()
