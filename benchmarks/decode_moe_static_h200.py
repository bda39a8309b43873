"""A static decode step's MoE block on one GPU (runtime/moe.moe_static, "local" mode): the local
experts one at a time (per-expert weights, eight kernels each: what the step ran before the
experts were stacked, and what int8 / 2:4 experts still run) against the stacked form (two
batched GEMMs over all of them, seven kernels in all: moe._batched_experts), at the seed
model's expert dimensions (hidden 4096, expert ffn 16384, top-2, bf16, random weights).

Each form's call is captured in a CUDA graph of its own (graph_timer.us_per_call) and the forms
are timed in interleaved rounds in one process. The floor is the local experts' weight bytes at
the HBM rate (every local expert is read whatever the routing: that is the static block's
shape). The outputs of the two forms are compared (bf16: GEMMs of other shapes round
differently).

    python benchmarks/decode_moe_static_h200.py --out moe_static.json [--rows 1,8,16,64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from graph_timer import us_per_call  # noqa: E402

from planc.backends.torch.runtime import moe  # noqa: E402
from planc.backends.torch.runtime.layers import Linear, empty_weight, laid_out  # noqa: E402


def _forms(n: int, hidden: int, ffn: int, dev: torch.device) -> dict[str, moe.ExpertWeights]:
    """The same n experts per-expert (Linear modules of laid-out weights, as make_linear
    builds plain ones) and stacked (empty_weight filled expert by expert, as make_mlp does)."""
    torch.manual_seed(0)
    scale = hidden ** -0.5
    gate_up = empty_weight((n, 2 * ffn, hidden), torch.bfloat16, dev)
    down = empty_weight((n, hidden, ffn), torch.bfloat16, dev)
    per: dict[str, list] = {"gate": [], "up": [], "down": []}
    for i in range(n):
        w = [(torch.randn(*s, device=dev) * scale).to(torch.bfloat16)
             for s in ((ffn, hidden), (ffn, hidden), (hidden, ffn))]
        gate_up[i, :ffn].copy_(w[0])
        gate_up[i, ffn:].copy_(w[1])
        down[i].copy_(w[2])
        for key, t in zip(("gate", "up", "down"), w):
            per[key].append(Linear(laid_out(t)))
    return {"per_expert": moe.ExpertWeights(0, per["gate"], per["up"], per["down"]),
            "stacked": moe.ExpertWeights.stacked(0, gate_up, down)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--experts", type=int, default=16, help="local experts (and the router's)")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=16384)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--rows", default="1,8,16,64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--hbm", type=float, default=4.8e12)
    a = ap.parse_args()
    dev = torch.device("cuda")
    n, h, f = a.experts, a.hidden, a.ffn
    forms = _forms(n, h, f, dev)
    router = (torch.randn(n, h, device=dev) * h ** -0.5).to(torch.bfloat16)
    weight_bytes = n * 3 * h * f * 2
    results = []
    for rows in (int(r) for r in a.rows.split(",")):
        x = torch.randn(rows, h, device=dev).to(torch.bfloat16)
        outs = {k: moe.moe_static(x, router, ex, a.top_k, "local", None)
                for k, ex in forms.items()}
        ref = outs["per_expert"].float()
        err = ((outs["stacked"].float() - ref).abs().max() / ref.abs().max()).item()
        times: dict[str, list[float]] = {k: [] for k in forms}
        for _ in range(a.rounds):
            for k, ex in forms.items():
                def call(ex: moe.ExpertWeights = ex, x: torch.Tensor = x) -> object:
                    return moe.moe_static(x, router, ex, a.top_k, "local", None)
                times[k].append(us_per_call([call], [call, call], 3, a.replays))
        med = {k: statistics.median(v) for k, v in times.items()}
        floor_us = weight_bytes / a.hbm * 1e6
        row = {"rows": rows, "experts": n, "hidden": h, "ffn": f, "top_k": a.top_k,
               "us": med, "rounds_us": times, "floor_us": floor_us,
               "floor_over": {k: floor_us / v for k, v in med.items()},
               "stacked_speedup": med["per_expert"] / med["stacked"],
               "max_rel_diff_stacked_vs_per_expert": err}
        print(json.dumps({k: row[k] for k in ("rows", "us", "floor_us", "stacked_speedup",
                                              "max_rel_diff_stacked_vs_per_expert")}),
              flush=True)
        results.append(row)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "hbm_floor_rate": a.hbm, "weight_bytes": weight_bytes}
    Path(a.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
