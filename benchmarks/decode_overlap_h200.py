"""Does an L2 prefetch of a GEMM's weight, issued while the small kernel before it runs, make a
decode layer faster? (issue 15: the batch-64 step's GEMMs read at 3.0-3.9 TB/s in the step's
graph while HBM idles during the small kernels between them.)

A Llama-3-8B-shaped layer is emulated with its real kernels and sizes, for a ring of distinct
layers (no weight or cache found in L2 by the next replay): norm -> qkv GEMM -> a RoPE-sized
elementwise kernel -> a read of the layer's KV cache (the attention's bytes, torch.sum) -> o
GEMM -> norm -> gate/up GEMM -> SiLU x up -> down GEMM. Variants, each one CUDA graph of the
ring (graph_timer: median of timed replays), per layer:
- plain: as above (cuBLAS F.linear).
- prefetch_P: on a side stream forked as each small kernel before a GEMM starts (the norms,
  the SiLU x up), this file's l2_prefetch of the next GEMM's first P MB; the side
  stream joins at the end of the graph, so no GEMM waits for a prefetch. (The prefetch
  kernel is this file's `l2_prefetch`: it stays here, since it measured no faster.)
- prefetch_P+o: the same, and Wo's first P MB forked as the KV read starts.
- kn: the weights stored [K, N] (x @ W), which makes cuBLAS pick other kernels.
Also per GEMM shape (a norm then the GEMM, ring of distinct weights): plain against prefetch_P,
and the read rate of a plain torch.sum over 4 GB (what a read-only kernel reaches).

    PYTHONPATH=$PWD python benchmarks/decode_overlap_h200.py --out $OUT/overlap.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from gpu_bench import machine
from graph_timer import us_per_call
from torch import Tensor

# --- the prefetch: cp.async.bulk.prefetch.L2 (sm_90+) over a tensor's first bytes, one
# instruction per PIECE bytes; the kernel ends as soon as the requests are issued.

PIECE = 16384  # bytes per prefetch instruction (a multiple of 16, as the instruction needs)
LANES = 32  # instructions per program (one warp)


def _supported(t: Tensor) -> bool:
    """Whether prefetch can run for t: a CUDA tensor on sm_90 or newer, triton importable."""
    return (triton is not None and t.is_cuda
            and torch.cuda.get_device_capability(t.device)[0] >= 9)


def _prefetch_body(BASE, n_pieces, PIECE_BYTES: tl.constexpr, LANES: tl.constexpr):
    """Program p prefetches pieces p * LANES .. (p + 1) * LANES - 1 of BASE (bytes)."""
    idx = tl.program_id(0) * LANES + tl.arange(0, LANES)
    ok = (idx < n_pieces).to(tl.int32)
    ptrs = BASE + idx.to(tl.int64) * PIECE_BYTES
    size = tl.full([LANES], PIECE_BYTES, tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $2, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $3; mov.u32 $0, 0; }",
        "=r,l,r,r", [ptrs, ok, size], dtype=tl.int32, is_pure=False, pack=1)


_KERNEL: list = []


def l2_prefetch(t: Tensor, nbytes: int) -> None:
    """Bulk-prefetch the first min(nbytes, t's bytes) of t (contiguous) into L2; whole PIECEs
    only (the tail of less than a piece is left)."""
    if not _supported(t) or nbytes <= 0:
        return
    assert t.is_contiguous()
    n_pieces = min(nbytes, t.numel() * t.element_size()) // PIECE
    if n_pieces == 0:
        return
    if not _KERNEL:
        _KERNEL.append(triton.jit(_prefetch_body))
    base = t.view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)
    _KERNEL[0][(triton.cdiv(n_pieces, LANES),)](base, n_pieces, PIECE_BYTES=PIECE,
                                                LANES=LANES, num_warps=1)


DT = torch.bfloat16
H, Q, KVH, D, FFN = 4096, 32, 8, 128, 14336
CTX = 2048
MB = 1 << 20


class Layer:
    def __init__(self, m: int, kn: bool) -> None:
        def w(n: int, k: int) -> torch.Tensor:
            t = torch.randn(n, k, device="cuda", dtype=DT) * k ** -0.5
            return t.t().contiguous() if kn else t

        self.kn = kn
        self.wqkv, self.wo = w((Q + 2 * KVH) * D, H), w(H, Q * D)
        self.wgu, self.wd = w(2 * FFN, H), w(H, FFN)
        self.kv = torch.randn(m, 2 * KVH, CTX, D, device="cuda", dtype=DT)  # K and V bytes
        self.nw = torch.ones(H, device="cuda", dtype=DT)


def mm(x: torch.Tensor, w: torch.Tensor, kn: bool) -> torch.Tensor:
    return x @ w if kn else F.linear(x, w)


class Runner:
    """One layer's kernels, with prefetches forked onto `side` where asked."""

    def __init__(self, m: int, pf_mb: float, pf_o: bool) -> None:
        self.m, self.pf, self.pf_o = m, int(pf_mb * MB), pf_o
        self.side = torch.cuda.Stream()
        self.forked = False  # join only a stream that was forked in (else the capture breaks)
        self.x = torch.randn(m, H, device="cuda", dtype=DT)

    def fork(self, w: torch.Tensor) -> None:
        if self.pf <= 0:
            return
        main = torch.cuda.current_stream()
        self.side.wait_stream(main)
        self.forked = True
        with torch.cuda.stream(self.side):
            l2_prefetch(w, self.pf)

    def join(self) -> None:
        if self.forked:
            torch.cuda.current_stream().wait_stream(self.side)
            self.forked = False

    def layer(self, L: Layer) -> None:
        self.fork(L.wqkv)
        h = F.rms_norm(self.x, (H,), L.nw, 1e-5)
        qkv = mm(h, L.wqkv, L.kn)
        q = qkv[:, : Q * D] * 1.0001  # RoPE-sized elementwise
        if self.pf_o:
            self.fork(L.wo)
        s = L.kv.sum(dtype=torch.float32)  # the attention's cache bytes
        a = q + s.to(DT)
        o = mm(a, L.wo, L.kn)
        self.fork(L.wgu)
        h = F.rms_norm(self.x + o, (H,), L.nw, 1e-5)
        gu = mm(h, L.wgu, L.kn)
        self.fork(L.wd)
        g, u = gu.chunk(2, dim=-1)
        act = F.silu(g) * u
        self.x.copy_(mm(act, L.wd, L.kn))


def time_layers(layers: list[Layer], m: int, pf_mb: float, pf_o: bool) -> float:
    r = Runner(m, pf_mb, pf_o)

    def all_layers() -> None:
        for L in layers:
            r.layer(L)
        r.join()

    return us_per_call([all_layers], [all_layers], 3, 20) / len(layers)


def time_gemm(ws: list[torch.Tensor], m: int, pf_mb: float) -> float:
    r = Runner(m, pf_mb, False)
    x = torch.randn(m, ws[0].shape[1], device="cuda", dtype=DT)
    nw = torch.ones(ws[0].shape[1], device="cuda", dtype=DT)

    def one(w: torch.Tensor) -> None:
        r.fork(w)
        F.linear(F.rms_norm(x, (x.shape[1],), nw, 1e-5), w)

    def ring() -> None:
        for w in ws:
            one(w)
        r.join()

    return us_per_call([ring], [ring], 3, 20) / len(ws)


def read_rate() -> float:
    t = torch.empty(2 * 1024 ** 3, device="cuda", dtype=DT).normal_()
    us = us_per_call([lambda: t.sum(dtype=torch.float32)], [lambda: t.sum()], 3, 20)
    return t.numel() * t.element_size() / (us * 1e-6) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--rows", type=int, nargs="*", default=[64, 1])
    ap.add_argument("--pf-mb", type=float, nargs="*", default=[4, 8, 16])
    args = ap.parse_args()
    t0 = time.perf_counter()
    out: dict = {"machine": machine(), "torch": torch.__version__, "layers": args.layers,
                 "records": []}

    def log(rec: dict) -> None:
        out["records"].append(rec)
        print(json.dumps(rec), f"[{time.perf_counter() - t0:.0f} s]", file=sys.stderr,
              flush=True)

    try:
        log({"what": "read_rate_tbps", "value": round(read_rate(), 3)})
    except Exception as e:  # noqa: BLE001 - a result
        log({"what": "read_rate_tbps", "error": repr(e)[:300]})
    torch.cuda.empty_cache()
    for m in args.rows:
        for kn in (False, True):
            layers = [Layer(m, kn) for _ in range(args.layers)]
            variants = [(0.0, False)] if kn else (
                [(0.0, False)] + [(p, False) for p in args.pf_mb] + [(args.pf_mb[-1], True)])
            for pf, pf_o in variants:
                name = ("kn" if kn else "plain") if pf == 0 else f"prefetch_{pf:g}MB" + (
                    "+o" if pf_o else "")
                try:
                    us = time_layers(layers, m, pf, pf_o)
                    log({"what": "layer", "rows": m, "variant": name, "us_per_layer": round(us, 2)})
                except Exception as e:  # noqa: BLE001
                    log({"what": "layer", "rows": m, "variant": name, "error": repr(e)[:300]})
            del layers
            torch.cuda.empty_cache()
        for proj, (n, k) in {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
                             "down": (4096, 14336)}.items():
            ws = [torch.randn(n, k, device="cuda", dtype=DT) for _ in range(
                max(2, -(-400 * MB // (n * k * 2))))]
            for pf in [0.0, *args.pf_mb]:
                try:
                    us = time_gemm(ws, m, pf)
                    log({"what": "gemm", "rows": m, "proj": proj, "prefetch_mb": pf,
                         "us": round(us, 2), "tbps": round(n * k * 2 / (us * 1e-6) / 1e12, 3)})
                except Exception as e:  # noqa: BLE001
                    log({"what": "gemm", "rows": m, "proj": proj, "prefetch_mb": pf,
                         "error": repr(e)[:300]})
            del ws
            torch.cuda.empty_cache()
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
