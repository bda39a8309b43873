"""Micro-benchmark of one decode step's attention over a KV cache (planc's decode_kernels against
two SDPA peers), each call captured in a CUDA graph as the decode step will be.

Run on the GPU machine from the repository root (under 2 minutes):
    PYTHONPATH=$PWD python benchmarks/decode_attention_h200.py --out $OUT/decode_attention.json

Shapes: Llama-3-8B decode (heads 32, kv_heads 8, head_dim 128, bf16, capacity 2080, row lengths
spread over 2049..2080: a 2048-token context plus generated tokens) at batch 1, 8 and 64, and
batch 8 at capacity 1088 with every length 1025. Candidates:
- grouped_bmm: decode_kernels.grouped_attention, n_read = max length rounded up to 256.
- triton_flash_decode: decode_kernels.flash_decode_triton, default splits, the tile autotuned
  (as the runtime runs it). Run 3 (h200_decode_attention_run3.json) also timed the splits a
  first-step timing picked (triton_flash_decode_tuned_sN): no faster, 9% slower at batch 64.
- sdpa_gqa_exact (peer): SDPA, enable_gqa=True, no mask, over the slots [0, max length): exact
  only where every row has the max length; its error is measured against that semantics.
- sdpa_mask_repeat (peer, what gpt-fast does): K/V repeat_interleave'd to the query heads and a
  boolean mask over the whole capacity built from the lengths, every call.
Timing: a CUDA graph of 10 calls, 20 warm-up replays, the median of 50 timed replays (CUDA
events) / 10. GB/s counts the KV bytes the semantics needs (visible slots * kv_heads * d * 2
tensors * element size), against the H200's 4.8 TB/s datasheet HBM bandwidth. The error is the
max abs difference from a float32 computation on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from graph_timer import us_per_call

from planc.backends.torch.runtime import decode_kernels as dk

HBM_GBPS = 4800.0  # H200 datasheet
CALLS_PER_GRAPH = 10
WARMUP_REPLAYS = 20
TIMED_REPLAYS = 50


@dataclass(frozen=True)
class Shape:
    name: str
    b: int
    heads: int
    kv: int
    d: int
    capacity: int
    len_lo: int  # row lengths spread evenly over [len_lo, len_hi]
    len_hi: int


SHAPES = [
    Shape("llama3-8b b1", 1, 32, 8, 128, 2080, 2080, 2080),
    Shape("llama3-8b b8", 8, 32, 8, 128, 2080, 2049, 2080),
    Shape("llama3-8b b64", 64, 32, 8, 128, 2080, 2049, 2080),
    Shape("small b8 cap1088", 8, 32, 8, 128, 1088, 1025, 1025),
]


def row_lengths(s: Shape) -> list[int]:
    """Lengths spread evenly over [len_lo, len_hi] (one row: len_hi)."""
    if s.b == 1:
        return [s.len_hi]
    return [s.len_lo + (s.len_hi - s.len_lo) * i // (s.b - 1) for i in range(s.b)]


def n_read_bucket(max_len: int, capacity: int, bucket: int = 256) -> int:
    """The static read bound a caller would use: the max length rounded up to the bucket."""
    return min(math.ceil(max_len / bucket) * bucket, capacity)


def kv_bytes(slots: int, kv: int, d: int, element_size: int) -> int:
    """KV bytes a call must read: its visible slots (summed over rows) of K and V."""
    return slots * kv * d * 2 * element_size


def make_inputs(s: Shape, dtype: torch.dtype, device: str) -> dict:
    """Random q and caches, lengths on the device, no gap (gap_lo = gap_hi = 0)."""
    gen = torch.Generator(device=device).manual_seed(0)
    lengths = row_lengths(s)
    return {
        "q": torch.randn(s.b, s.heads, s.d, generator=gen, device=device, dtype=dtype),
        "k": torch.randn(s.b, s.kv, s.capacity, s.d, generator=gen, device=device, dtype=dtype),
        "v": torch.randn(s.b, s.kv, s.capacity, s.d, generator=gen, device=device, dtype=dtype),
        "lengths": torch.tensor(lengths, device=device, dtype=torch.int32),
        "gap_lo": torch.zeros(s.b, device=device, dtype=torch.int32),
        "max_len": max(lengths),
        "scale": s.d ** -0.5,
    }


def reference_f32(x: dict, all_max: bool = False) -> torch.Tensor:
    """float32 attention, K/V repeated per query head, masked to each row's length (to the max
    length for every row when all_max: the sdpa_gqa_exact semantics)."""
    q, k, v = x["q"].float(), x["k"].float(), x["v"].float()
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = torch.einsum("bhd,bhnd->bhn", q, k) * x["scale"]
    lengths = torch.full_like(x["lengths"], x["max_len"]) if all_max else x["lengths"]
    seen = torch.arange(k.shape[2], device=q.device) < lengths[:, None]
    scores = scores.masked_fill(~seen[:, None, :], float("-inf"))
    return torch.einsum("bhn,bhnd->bhd", scores.softmax(-1), v)


def candidates(x: dict) -> dict[str, tuple[Callable[[], torch.Tensor], bool]]:
    """name -> (a call on the fixed inputs, whether its semantics is 'every row sees the max
    length'). Every call reads the lengths on the device (graph replays stay valid)."""
    q, k, v, lengths, gap_lo, scale = (x[n] for n in ("q", "k", "v", "lengths", "gap_lo",
                                                     "scale"))
    n_read = n_read_bucket(x["max_len"], k.shape[2])
    g = q.shape[1] // k.shape[1]
    out: dict[str, tuple[Callable[[], torch.Tensor], bool]] = {
        "grouped_bmm": (lambda: dk.grouped_attention(q, k, v, lengths, gap_lo, 0, scale,
                                                     n_read), False),
    }
    if dk.available():
        out["triton_flash_decode"] = (
            lambda: dk.flash_decode_triton(q, k, v, lengths, gap_lo, 0, scale), False)

    def sdpa_exact() -> torch.Tensor:
        kk, vv = k[:, :, :x["max_len"]], v[:, :, :x["max_len"]]
        o = F.scaled_dot_product_attention(q.unsqueeze(2), kk, vv, scale=scale, enable_gqa=True)
        return o.squeeze(2)

    def sdpa_mask_repeat() -> torch.Tensor:
        mask = torch.arange(k.shape[2], device=q.device) < lengths[:, None]
        kk, vv = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        o = F.scaled_dot_product_attention(q.unsqueeze(2), kk, vv,
                                           attn_mask=mask[:, None, None, :], scale=scale)
        return o.squeeze(2)

    out["sdpa_gqa_exact"] = (sdpa_exact, True)
    out["sdpa_mask_repeat"] = (sdpa_mask_repeat, False)
    return out


def time_graph(fn: Callable[[], torch.Tensor]) -> float:
    """Microseconds per call: fn captured CALLS_PER_GRAPH times in one CUDA graph, the median
    over timed replays."""
    return us_per_call([fn] * CALLS_PER_GRAPH, [fn] * 3, WARMUP_REPLAYS, TIMED_REPLAYS)


def measure(s: Shape, dtype: torch.dtype) -> list[dict]:
    """One record per candidate of a shape (an error string instead of numbers if it fails)."""
    x = make_inputs(s, dtype, "cuda")
    refs = {False: reference_f32(x), True: reference_f32(x, all_max=True)}
    slots = {False: sum(row_lengths(s)), True: s.b * x["max_len"]}
    records = []
    for name, (fn, all_max) in candidates(x).items():
        rec = {"shape": s.name, "kernel": name, **asdict(s), "dtype": str(dtype)}
        try:
            err = (fn().float() - refs[all_max]).abs().max().item()
            us = time_graph(fn)
        except Exception as e:  # noqa: BLE001 - a failing or uncapturable peer is a result
            records.append({**rec, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        gbps = kv_bytes(slots[all_max], s.kv, s.d, x["k"].element_size()) / (us * 1e-6) / 1e9
        records.append({**rec, "us_per_call": us, "kv_gbps": gbps, "of_hbm": gbps / HBM_GBPS,
                        "max_abs_err": err, "semantics": "max length" if all_max else "exact"})
        torch.cuda.synchronize()
    return records


def table(records: list[dict]) -> str:
    """The records as a fixed-width text table."""
    head = (f"{'shape':<18} {'kernel':<20} {'us/call':>9} {'GB/s':>8} {'of HBM':>7} "
            f"{'max err':>9}")
    lines = [head]
    for r in records:
        if "error" in r:
            lines.append(f"{r['shape']:<18} {r['kernel']:<20} {r['error']}")
            continue
        lines.append(f"{r['shape']:<18} {r['kernel']:<20} {r['us_per_call']:>9.1f} "
                     f"{r['kv_gbps']:>8.0f} {r['of_hbm']:>7.1%} {r['max_abs_err']:>9.2e}")
    return "\n".join(lines)


def environment() -> dict:
    """Versions and device the numbers belong to."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(),
            "chosen_kernel": dk.choose("cuda", torch.bfloat16)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--shapes", nargs="*", help="only these shape names (default: all)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("decode_attention_h200.py needs CUDA")
    # a graph of one kernel's copies launched with PDL times the attention up to 14% slow,
    # a chain the step never runs (h200_decode_issue15.md, run 33): off unless asked for
    os.environ.setdefault("PLANC_DECODE_PDL", "0")
    records = []
    for s in SHAPES:
        if not args.shapes or s.name in args.shapes:
            records += measure(s, torch.bfloat16)
    print(table(records))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"environment": environment(), "hbm_gbps": HBM_GBPS,
                                          "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
