"""Micro-benchmark of decode's skinny GEMMs y = x @ W^T (F.linear, bf16): cuBLAS against torch
inductor's max-autotune and planc's Triton kernel (runtime/decode_gemm.py), each in a CUDA graph.

Run on the GPU machine from the repository root (about 2-3 minutes on one H200):
    PYTHONPATH=$PWD python benchmarks/decode_gemm_h200.py --out $OUT/decode_gemm.json
(lark, pydantic and z3 on the path as for gpu_bench.py: the seed plan is read by planc.)

Shapes: rows M in 64, 8, 1 (the decode batch) for the Llama-3-8B projections (qkv 6144 x 4096,
o 4096 x 4096, gate_up 28672 x 4096, down 4096 x 14336, lm_head 128256 x 4096) and those of the
seed plan benchmarks/plans/gpu1_decode_single.plan (qkv = (heads + 2 kv_heads) head_dim x hidden,
o = hidden x heads head_dim, gate_up = 2 ffn x hidden, down = hidden x ffn, lm_head = vocab x
hidden; a weight shape Llama's list already has is not timed twice). Candidates:
- cublas: F.linear.
- inductor: torch.compile(F.linear wrapper, mode="max-autotune-no-cudagraphs", dynamic=False),
  gemm backends "ATEN,TRITON" (cuBLAS or inductor's Triton templates, no CUTLASS). Its compiles
  stop after --inductor-budget-s seconds in all (the M=64 Llama shapes come first): the shapes
  after that record "skipped".
- planc: decode_gemm.skinny_linear, after its autotune (timed at the first call per shape; the
  chosen config is recorded).
Timing (honest for weights smaller than the 60 MB L2): a ring of distinct weight copies of at
least --ring-mb MB in all; a CUDA graph calls the candidate once per copy; 3 warm-up replays,
then the median of 20 timed replays (CUDA events) / copies = us per call. TB/s = weight bytes /
time. Each output is checked once per shape against F.linear in float32 (max |err| / max |ref|).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch
import torch.nn.functional as F
from gpu_bench import machine, plans_of
from graph_timer import us_per_call

from planc.backends.torch.runtime import decode_gemm as dg

SEED_PLAN = ROOT / "benchmarks" / "plans" / "gpu1_decode_single.plan"
LLAMA3_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
             "down": (4096, 14336), "lm_head": (128256, 4096)}  # (N, K)
ROWS = (64, 8, 1)
WARMUP_REPLAYS = 3
TIMED_REPLAYS = 20
DTYPE = torch.bfloat16

Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Shape:
    model: str
    proj: str
    m: int
    n: int
    k: int

    @property
    def name(self) -> str:
        return f"{self.model} {self.proj} M={self.m}"


def seed_projections(plan_path: Path) -> dict[str, tuple[int, int]]:
    """(N, K) of the seed plan's five projections, from its model block."""
    md = plans_of(plan_path)[0].model
    return {"qkv": ((md.heads + 2 * md.kv_heads) * md.head_dim, md.hidden),
            "o": (md.hidden, md.heads * md.head_dim), "gate_up": (2 * md.ffn, md.hidden),
            "down": (md.hidden, md.ffn), "lm_head": (md.vocab, md.hidden)}


def all_shapes(plan_path: Path) -> list[Shape]:
    """Llama-3-8B's shapes at each M (M=64 first: where cuBLAS is furthest from the bandwidth),
    then the seed's whose weight shape Llama's list lacks."""
    out = [Shape("llama3-8b", p, m, n, k) for m in ROWS for p, (n, k) in LLAMA3_8B.items()]
    have = set(LLAMA3_8B.values())
    seed = {p: nk for p, nk in seed_projections(plan_path).items() if nk not in have}
    return out + [Shape("seed", p, m, n, k) for m in ROWS for p, (n, k) in seed.items()]


def weight_ring(n: int, k: int, ring_bytes: float) -> list[torch.Tensor]:
    """Distinct [n, k] weights, at least 2 and at least ring_bytes in all: a graph that reads
    each once finds none of them in L2."""
    copies = max(2, math.ceil(ring_bytes / (n * k * DTYPE.itemsize)))
    return [torch.randn(n, k, device="cuda", dtype=DTYPE) * k ** -0.5 for _ in range(copies)]


def time_ring(fn: Linear, x: torch.Tensor, ring: list[torch.Tensor]) -> float:
    """Microseconds per call: one CUDA graph of fn(x, w) for every w of the ring, the median of
    timed replays over the ring's length."""
    calls = [functools.partial(fn, x, w) for w in ring]
    return us_per_call(calls, calls[:2], WARMUP_REPLAYS, TIMED_REPLAYS)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|."""
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def inductor_linear() -> Linear:
    """A fresh compiled F.linear (dynamo reset first: every shape is its own compile, never
    counted against dynamo's recompile limit)."""
    torch._dynamo.reset()

    def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)

    return torch.compile(linear, mode="max-autotune-no-cudagraphs", dynamic=False)


def measure(name: str, fn: Linear, x: torch.Tensor, ring: list[torch.Tensor],
            ref: torch.Tensor) -> dict:
    """One candidate on one shape: first-call seconds (compile / autotune), error, us, TB/s; an
    error string instead if it fails (one failure does not lose the others)."""
    try:
        t0 = time.perf_counter()
        out = fn(x, ring[0])
        torch.cuda.synchronize()
        first_s = time.perf_counter() - t0
        rec: dict = {"first_call_s": round(first_s, 2), "max_rel_err": rel_error(out, ref)}
        if name == "planc":
            rec["config"] = dg.best_config()
        us = time_ring(fn, x, ring)
        wbytes = ring[0].numel() * ring[0].element_size()
        rec.update(us=round(us, 2), tbps=round(wbytes / (us * 1e-6) / 1e12, 3))
        return rec
    except Exception as e:  # noqa: BLE001 - a failing or uncapturable candidate is a result
        return {"error": f"{type(e).__name__}: {e}"[:400]}
    finally:
        torch.cuda.synchronize()


def run_shape(s: Shape, ring: list[torch.Tensor], inductor_left: float) -> dict:
    """Every candidate on one shape; the winner is the fastest that ran within 1e-2 of the
    float32 reference."""
    x = torch.randn(s.m, s.k, device="cuda", dtype=DTYPE)
    ref = F.linear(x.float(), ring[0].float())
    cands: dict[str, dict] = {"cublas": measure("cublas", F.linear, x, ring, ref)}
    if inductor_left > 0:
        t0 = time.perf_counter()
        cands["inductor"] = measure("inductor", inductor_linear(), x, ring, ref)
        cands["inductor"]["wall_s"] = round(time.perf_counter() - t0, 1)
    else:
        cands["inductor"] = {"skipped": "inductor budget spent (--inductor-budget-s)"}
    if dg.available():
        cands["planc"] = measure("planc", dg.skinny_linear, x, ring, ref)
    else:
        cands["planc"] = {"skipped": "triton is not installed"}
    ok = {k: c["us"] for k, c in cands.items() if "us" in c and c["max_rel_err"] < 1e-2}
    wbytes = s.n * s.k * DTYPE.itemsize
    return {**asdict(s), "weight_bytes": wbytes, "ring": len(ring), "candidates": cands,
            "winner": min(ok, key=ok.__getitem__) if ok else None}


def row_text(r: dict) -> str:
    """One line of the table: us and TB/s per candidate, the winner, planc's config."""
    cells = []
    for name in ("cublas", "inductor", "planc"):
        c = r["candidates"][name]
        cells.append(f"{c['us']:>8.1f} {c['tbps']:>5.2f}" if "us" in c else f"{'-':>14}")
    cfg = r["candidates"]["planc"].get("config") or {}
    tile = ("{BLOCK_N}x{BLOCK_K} sk{SPLIT_K} w{num_warps} s{num_stages}".format(**cfg)
            if cfg else "")
    name = f"{r['model']} {r['proj']}"
    return (f"{name:<18} {r['m']:>3} {r['n']:>7} {r['k']:>6} " + " ".join(cells)
            + f"  {r['winner'] or '-':<9} {tile}")


def table(records: list[dict]) -> str:
    head = (f"{'shape':<18} {'M':>3} {'N':>7} {'K':>6} {'cublas us':>8} {'TB/s':>5} "
            f"{'induct us':>8} {'TB/s':>5} {'planc us':>8} {'TB/s':>5}  {'winner':<9} planc config")
    return "\n".join([head] + [row_text(r) for r in records])


def configure_inductor() -> dict:
    """Inductor's gemm autotuning kept to cuBLAS and its Triton templates (no CUTLASS: its
    compiles take minutes); dynamo may recompile per shape."""
    import torch._inductor.config as ic
    ic.max_autotune_gemm_backends = "ATEN,TRITON"
    return {"max_autotune_gemm_backends": ic.max_autotune_gemm_backends,
            "mode": "max-autotune-no-cudagraphs", "dynamic": False}


def environment() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    props = torch.cuda.get_device_properties(0)
    return {"torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "sms": props.multi_processor_count, "l2_bytes": getattr(props, "L2_cache_size", None)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--ring-mb", type=float, default=400.0,
                    help="least MB of distinct weights a timed graph reads (L2 is 60 MB)")
    ap.add_argument("--inductor-budget-s", type=float, default=75.0,
                    help="seconds of inductor compiles in all before it is skipped")
    ap.add_argument("--only", nargs="*", help="only shapes whose 'model proj M=m' name contains "
                    "one of these strings")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("decode_gemm_h200.py needs CUDA")
    started = time.perf_counter()
    settings = {"ring_mb": args.ring_mb, "warmup_replays": WARMUP_REPLAYS,
                "timed_replays": TIMED_REPLAYS, "dtype": str(DTYPE),
                "inductor_budget_s": args.inductor_budget_s, "inductor": configure_inductor()}
    shapes = [s for s in all_shapes(SEED_PLAN)
              if not args.only or any(o in s.name for o in args.only)]
    records: list[dict] = []
    rings: dict[tuple[int, int], list[torch.Tensor]] = {}
    inductor_spent = 0.0
    for s in shapes:
        if (s.n, s.k) not in rings:
            rings.clear()  # one ring at a time: an lm_head ring is 2 GB
            torch.cuda.empty_cache()
            rings[(s.n, s.k)] = weight_ring(s.n, s.k, args.ring_mb * 1e6)
        r = run_shape(s, rings[(s.n, s.k)], args.inductor_budget_s - inductor_spent)
        inductor_spent += r["candidates"]["inductor"].get("wall_s", 0.0)
        records.append(r)
        print(row_text(r), f"  [{time.perf_counter() - started:.0f} s]", file=sys.stderr,
              flush=True)
    print(table(records), file=sys.stderr)
    winners = {f"{r['model']} {r['proj']} M={r['m']}": r["winner"] for r in records}
    out = {"machine": machine(), "environment": environment(), "settings": settings,
           "wall_s": round(time.perf_counter() - started, 1), "winners": winners,
           "records": records}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
