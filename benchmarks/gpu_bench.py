"""GPU benchmark driver: every benchmark plan through `planc run --device cuda`, predicted
against measured, written as one JSON file of records (see benchmarks/README.md).

Run on the GPU machine from the repository root:
    python benchmarks/gpu_bench.py --out $OUT/run.json --plans benchmarks/plans/gpu2_*.plan
It first writes one random bf16 checkpoint per model (reused by every plan of that model), then
runs each plan as a user would (`python -m planc run ... --format json --no-reference`), with
warm-up and repeats; planc reports the median of repeats on the slowest rank and, per rank,
torch.cuda.max_memory_allocated. Predictions come from the same compiler: the placement graph's
per-rank peak (weights + live buffers, without the runtime reserve) and its step-time estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planc.backends.torch.runconfig import to_run_config
from planc.compiler.lower import lower
from planc.cost.time import rates_of, step_estimate, step_lower_bound
from planc.diagnostics import Diagnostics
from planc.pipeline import load


def plans_of(path: Path):  # type: ignore[no-untyped-def]
    diags = Diagnostics()
    spec, _ = load(path, diags)
    if spec is None or diags.has_errors:
        raise SystemExit(f"{path}: does not resolve: {[d.message for d in diags.items]}")
    return spec.plans


def strategy_of(plan) -> str:  # type: ignore[no-untyped-def]
    roles = []
    for sh in plan.shards:
        if "seq" in sh.dims:
            roles.append(f"{sh.attention} attention")
        elif "head_dim" in sh.dims:
            roles.append("head x head_dim")
        elif "experts" in sh.dims:
            roles.append("expert parallel" if "batch" in sh.dims else "experts over tp")
        elif "layers" in sh.dims:
            roles.append("layer-wise fit cache" if sh.fit_cache else "pipeline")
        elif "heads" in sh.dims:
            roles.append("tensor parallel")
    return " + ".join(dict.fromkeys(roles)) or "single device"


def checkpoint_for(plan, cache: dict, workdir: Path) -> str:  # type: ignore[no-untyped-def]
    from planc.backends.torch.reference import checkpoint_key, save_random_checkpoint

    cfg = to_run_config(plan, lower(plan), dtype="bfloat16")
    # everything the checkpoint depends on, not the model alone: a decode plan needs the
    # lm_head that a prefill plan's checkpoint of the same model lacks
    key = repr(checkpoint_key(cfg))  # a string: the index is JSON
    index = workdir / "checkpoints.json"  # a later gpu_bench on the same workdir reuses them
    if not cache and index.exists():
        cache.update(json.loads(index.read_text()))
    if key not in cache:
        path = workdir / f"ckpt{len(cache)}"
        path.mkdir(parents=True, exist_ok=True)
        t = time.time()
        save_random_checkpoint(cfg, path)
        print(f"checkpoint for {plan.model.name}: {time.time() - t:.1f} s", file=sys.stderr)
        cache[key] = str(path)
        index.write_text(json.dumps(cache))
    return cache[key]


def run_plan(path: Path, plan, weights: str, repeats: int, warmup: int, timeout: int,  # type: ignore[no-untyped-def]
             reference: bool = False, dtype: str | None = None) -> dict:
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
               NVSHMEM_DISABLE_NVLS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "planc", "run", str(path), "--plan", plan.name, "--device",
           "cuda", "--format", "json", "--weights", weights,
           "--repeats", str(repeats), "--warmup", str(warmup), "--timeout", str(timeout)]
    if not reference:
        cmd.insert(cmd.index("--weights"), "--no-reference")
    if dtype is not None:
        cmd += ["--dtype", dtype]
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout + 60)
    wall = time.time() - t
    if p.returncode != 0:
        return {"error": p.stderr[-3000:], "returncode": p.returncode, "wall_s": wall}
    out = json.loads(p.stdout)
    out["wall_s"] = wall
    return out


def record(path: Path, plan, metrics: dict) -> dict:  # type: ignore[no-untyped-def]
    graph = lower(plan)
    cfg = to_run_config(plan, graph, dtype="bfloat16")
    rates = rates_of(plan)
    tokens = graph.batch * graph.seq
    rec = {
        "plan": f"{path.name}:{plan.name}",
        "strategy": strategy_of(plan),
        "gpus": plan.devices,
        "mesh": [list(x) for x in plan.mesh],
        "batch": graph.batch, "seq": graph.seq, "layers": plan.model.layers,
        "microbatches": graph.microbatches,
        "predicted_peak": list(cfg.predicted_peak),
        "predicted_time_s": step_estimate(graph, rates),
        "bound_time_s": float(step_lower_bound(graph, rates)),
        "tokens": tokens,
    }
    if graph.phase == "decode":
        rec["predicted_ttft_ms"] = step_estimate(graph, rates) * 1e3
        rec["predicted_tpot_ms"] = step_estimate(graph, rates, phase="decode") * 1e3
        rec["bound_tpot_ms"] = float(step_lower_bound(graph, rates, "decode")) * 1e3
        rec["cache_resident"] = [c.cache_resident for c in graph.classes]
        rec["stage_weights"] = [c.memory["weights"] for c in graph.classes]
    if "error" in metrics:
        rec["error"] = metrics["error"]
        return rec
    ranks = sorted(metrics.get("ranks", []), key=lambda r: r["rank"])
    rec.update({
        "tokens_per_s": metrics.get("tokens_per_s"),
        "measured_time_s": metrics.get("time_s"),
        "times_s": metrics.get("times_s"),
        "measured_peak": [r.get("peak_allocated") for r in ranks],
        "measured_reserved": [r.get("peak_reserved") for r in ranks],
        "resident_before_forward": [r.get("resident_before_forward") for r in ranks],
        "weight_bytes": [r.get("weight_bytes") for r in ranks],
        "sdpa_backend": metrics.get("sdpa_backend"),
        "decode_step": metrics.get("decode_step"),  # cuda_graph, or why the rounds ran eagerly
        "decode_attention": metrics.get("decode_attention"),  # the decode attention kernel
        "decode_attention_tiles": metrics.get("decode_attention_tiles"),  # autotuner's pick
        "decode_gemm": metrics.get("decode_gemm"),  # the decode step's GEMM kernels
        "decode_exchange": metrics.get("decode_exchange"),  # a pipeline stage's, if any
        "graph_pool_bytes": [r.get("graph_pool_bytes") for r in ranks],
        "matches_reference": metrics.get("matches_reference"),
        "ring_block_kernel": metrics.get("ring_block_kernel"),  # ring attention's block kernel
        "wall_s": metrics.get("wall_s"),
    })
    pk = [(m, p) for m, p in zip(rec["measured_peak"], rec["predicted_peak"]) if m]
    if pk:
        rec["peak_error"] = max(abs(p - m) / m for m, p in pk)
    if graph.phase == "decode":
        for k in ("ttft_ms", "tpot_ms", "output_tokens_per_s", "matches_reference"):
            rec[k] = metrics.get(k)
        if rec.get("tpot_ms"):
            rec["tpot_error"] = (rec["predicted_tpot_ms"] - rec["tpot_ms"]) / rec["tpot_ms"]
    elif rec["measured_time_s"]:
        rec["time_error"] = (rec["predicted_time_s"] - rec["measured_time_s"]) / rec[
            "measured_time_s"]
    return rec


def reference_check(path: Path, plan, weights: str, timeout: int) -> dict:  # type: ignore[no-untyped-def]
    """One float32 run with the reference on: its verdict and how its decode steps ran."""
    m = run_plan(path, plan, weights, 1, 0, timeout, reference=True, dtype="float32")
    if "error" in m:
        return {"ok": False, "dtype": "float32", "error": m["error"][-1500:]}
    verdict = m.get("reference") or {}
    return {"ok": verdict.get("ok"), "dtype": "float32", "verdict": verdict,
            "decode_step": m.get("decode_step"), "decode_attention": m.get("decode_attention"),
            "decode_gemm": m.get("decode_gemm"), "decode_exchange": m.get("decode_exchange"),
            "max_rel_error": m.get("max_rel_error")}


def machine() -> dict:
    info = {"host": platform.node(), "python": platform.python_version(),
            "date": date.today().isoformat()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpus_visible"] = torch.cuda.device_count()
    except ImportError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plans", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default=os.environ.get("PLANC_MACHINE", "unknown"))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--workdir", default="/tmp/planc-bench")
    ap.add_argument("--dry-run", action="store_true", help="predictions only, run nothing")
    ap.add_argument("--reference", nargs="*", default=[], metavar="PLAN_FILE",
                    help="after their timed run, these plan files run once more in float32 "
                         "with the reference check on (decode accepts no token difference, so "
                         "a 16-bit run's near-ties are no evidence: docs/strategies.md); the "
                         "record's reference_check holds the verdict")
    a = ap.parse_args()
    cache: dict = {}
    records = []
    for f in a.plans:
        path = Path(f)
        for plan in plans_of(path):
            if a.dry_run:
                records.append(record(path, plan, {"error": "dry run"}))
                continue
            weights = checkpoint_for(plan, cache, Path(a.workdir))
            metrics = run_plan(path, plan, weights, a.repeats, a.warmup, a.timeout)
            rec = record(path, plan, metrics)
            if path.name in {Path(r).name for r in a.reference}:
                rec["reference_check"] = reference_check(path, plan, weights, a.timeout)
            records.append(rec)
            print(json.dumps({k: rec.get(k) for k in ("plan", "tokens_per_s", "measured_time_s",
                                                       "predicted_time_s", "peak_error",
                                                       "ttft_ms", "tpot_ms",
                                                       "predicted_tpot_ms", "error")})[:600],
                  file=sys.stderr)
            Path(a.out).write_text(json.dumps({"machine": a.machine, **machine(),
                                               "records": records}, indent=1))
    Path(a.out).write_text(json.dumps({"machine": a.machine, **machine(), "records": records},
                                      indent=1))


if __name__ == "__main__":
    main()
