"""Where a decode step's time goes: every kernel of planc's static decode step on one GPU, from
torch.profiler, grouped into what it does (issue 15: which kernels to fuse, how far the GEMMs and
the cache read are from the bandwidth).

For each plan it loads the model as a generated program does (runtime/program.load), runs one
greedy decode (which captures the step's CUDA graph), then profiles `--steps` replays of the
graph and, separately, the same step run eagerly (the same kernels, with Python's launch gaps).
Per step it reports: the step's time by CUDA events (no profiler), the kernels' summed busy
time, how many kernels, and per group (GEMM, attention, elementwise, copies, reductions) the
count and time; the GEMMs' weight bytes over their time is their read rate.

`--layers N` runs the plan's model cut to N layers (per-layer kernels do not depend on the
depth; the checkpoint is written in seconds instead of minutes).

`--variants "A=1 B=2" "A=0"` is a same-process A/B of runtime settings read at launch (such as
PLANC_DECODE_PDL and PLANC_DECODE_PREFETCH, runtime/dependent_launch.py): after the plan's
record, the step is captured once more per variant (environment set, a fresh graph pool), then
the variants' graphs are timed in `--rounds` interleaved rounds (so a drift of the machine's
clock falls on every variant alike), each round `--steps` replays back to back between two
CUDA events as a decode runs them (no host sync between steps, so the graph's launch overlaps
the step before), and profiled once each.

    python benchmarks/decode_profile_h200.py --out $OUT/profile.json --layers 4 \
        benchmarks/plans/gpu1_decode_llama3_8b_b{1,8,64}.plan
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch
from gpu_bench import checkpoint_for, machine, plans_of

from planc.backends.torch.runconfig import to_run_config
from planc.backends.torch.runtime import dist as rdist
from planc.backends.torch.runtime import pipeline, program
from planc.compiler.lower import lower

GROUPS = [  # first match wins: (group, pattern over the kernel name)
    ("elementwise (compiled)", r"^triton_(red|poi|per)_"),  # inductor's, whatever they fuse
    ("attention", r"attn_partials|_merge_body|flash_decode|fwd_kernel|flash"),
    ("gemm", r"gemm|nvjet|cutlass|xmma|sm90|sm100|splitK|splitk|_reduce_body"),
    ("elementwise (planc triton)", r"rope_store"),
    ("argmax/reduce", r"argmax|reduce|max_kernel"),
    ("index/copy", r"index|copy|scatter|gather|Memcpy|memcpy|embedding"),
    ("elementwise (eager)", r"elementwise|vectorized|unrolled|rms|norm"),
]


def group_of(name: str) -> str:
    for g, pat in GROUPS:
        if re.search(pat, name, re.IGNORECASE):
            return g
    return "other"


def with_layers(path: Path, layers: int | None) -> Path:
    """The plan file, its model cut to `layers` layers (a temporary copy)."""
    if layers is None:
        return path
    text = re.sub(r"(\n\s*layers\s+)\d+", rf"\g<1>{layers}", path.read_text(), count=1)
    out = Path(tempfile.mkdtemp()) / path.name
    out.write_text(text)
    return out


def kernels_of(prof: torch.profiler.profile) -> list[tuple[str, float, float]]:
    """(name, start us, duration us) of every GPU kernel / copy the profiler saw."""
    out = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out.append((e.name, float(e.time_range.start), float(e.time_range.elapsed_us())))
    return sorted(out, key=lambda k: k[1])


def summarize(kernels: list[tuple[str, float, float]], steps: int, weight_bytes: int
              ) -> dict:
    if not kernels:
        return {"kernels_per_step": 0, "note": "the profiler saw no GPU kernels"}
    span = kernels[-1][1] + kernels[-1][2] - kernels[0][1]
    busy = sum(k[2] for k in kernels)
    groups: dict[str, list[float]] = defaultdict(list)
    names: dict[str, list[float]] = defaultdict(list)
    for name, _, dur in kernels:
        groups[group_of(name)].append(dur)
        names[name].append(dur)
    per = {g: {"count_per_step": len(d) / steps, "us_per_step": sum(d) / steps,
               "median_us": statistics.median(d)} for g, d in groups.items()}
    gemm_us = per.get("gemm", {}).get("us_per_step", 0.0)
    top = sorted(names.items(), key=lambda kv: -sum(kv[1]))[:25]
    return {
        "kernels_per_step": len(kernels) / steps,
        "span_us_per_step": span / steps,
        "busy_us_per_step": busy / steps,
        "groups": per,
        "gemm_weight_bytes": weight_bytes,
        "gemm_read_TBps": weight_bytes / (gemm_us * 1e-6) / 1e12 if gemm_us else None,
        "top_kernels": [{"name": n[:160], "group": group_of(n), "count_per_step": len(d) / steps,
                         "us_per_step": sum(d) / steps} for n, d in top],
    }


def event_ms(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return times


def parse_variant(text: str) -> dict[str, str]:
    """"A=1 B=2" -> {"A": "1", "B": "2"} (an empty string: the environment as it is)."""
    pairs = [kv.split("=", 1) for kv in text.split()]
    if any(len(kv) != 2 for kv in pairs):
        raise SystemExit(f"--variants: {text!r} is not NAME=VALUE ...")
    return dict(pairs)  # type: ignore[arg-type]


def time_variants(static, n_read: int, restart, variants: list[str], steps: int,  # type: ignore[no-untyped-def]
                  rounds: int, gemm_bytes: int) -> list[dict]:
    """Each variant's graph of the step (module docstring): interleaved CUDA-event timings of
    its replays, its step kind as the run's metrics name it, and one profiled pass."""
    graphs, out = [], []
    for text in variants:
        env = parse_variant(text)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            static.pool = torch.cuda.graph_pool_handle()
            restart()
            graphs.append(static._capture(0, n_read))
            out.append({"variant": text, "mode": static.mode, "gemm": static.gemm,
                        "step_ms": []})
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    for g in graphs:  # warm each
        restart()
        g.replay()
    for _ in range(rounds):
        for g, rec in zip(graphs, out):
            restart()
            rec["step_ms"].append(back_to_back_ms(g.replay, steps))
    for g, rec in zip(graphs, out):
        rec["step_ms_median"] = statistics.median(rec["step_ms"])
        restart()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                g.replay()
            torch.cuda.synchronize()
        rec.update(summarize(kernels_of(prof), steps, gemm_bytes))
    return out


def back_to_back_ms(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    """Mean ms of n calls of fn issued back to back between two CUDA events."""
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


def profile_plan(path: Path, plan, ckpt: str, steps: int,  # type: ignore[no-untyped-def]
                 variants: list[str] | None = None, rounds: int = 5) -> dict:
    cfg = to_run_config(plan, lower(plan), dtype="bfloat16")
    ctx = rdist.make_context(cfg, torch.device("cuda", 0))
    model = program.load(ctx, ckpt)
    prompt, ropes = program.rank_prompt(ctx), pipeline.step_ropes(ctx)
    rec: dict = {"plan": f"{path.name}:{plan.name}", "layers": cfg.model.layers,
                 "batch": cfg.batch, "context": cfg.context}
    with torch.inference_mode():
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        pipeline.generate(ctx, model, prompt, ropes)  # captures the graph
        rec["first_generate_peak_above_resident"] = torch.cuda.max_memory_allocated() - resident
        torch.cuda.reset_peak_memory_stats()
        pipeline.generate(ctx, model, prompt, ropes)  # replays only
        rec["second_generate_peak_above_resident"] = torch.cuda.max_memory_allocated() - resident
        static = model.static_step(ctx)
        assert static is not None, "this plan's decode does not run the static step"
        rec.update(model.step_kind(ctx))
        first = static.tokens[:, 0].clone()
        n_read = static._read_length(1)
        gemm_bytes = sum(lin.weight.numel() * lin.weight.element_size()
                         for layer in model.layers
                         for lin in (layer.attn.wqkv, layer.attn.wo, layer.mlp.gate_up,
                                     layer.mlp.down))
        assert model.lm_head is not None
        gemm_bytes += model.lm_head.numel() * model.lm_head.element_size()

        def restart() -> None:
            static.start(0, first, torch.full_like(first, cfg.context), None)

        def replay() -> None:
            static.graphs[(0, n_read)].replay()

        def eager() -> None:
            static._run(0, n_read)

        for mode, fn in (("graph", replay), ("eager", eager)):
            restart()
            fn()  # warm
            restart()
            ms = event_ms(fn, steps)
            restart()
            torch.cuda.synchronize()
            with torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    fn()
                torch.cuda.synchronize()
            rec[mode] = {"step_ms_median": statistics.median(ms), "step_ms": ms,
                         **summarize(kernels_of(prof), steps, gemm_bytes)}
        if variants:
            rec["variants"] = time_variants(static, n_read, restart, variants, steps, rounds,
                                            gemm_bytes)
    del model
    torch.cuda.empty_cache()
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plans", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--workdir", default="/tmp/planc-profile")
    ap.add_argument("--variants", nargs="*", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0",
                 "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(k, v)
    os.environ.update(rdist.NO_MULTICAST_ENV)
    torch.cuda.set_device(0)
    torch.distributed.init_process_group("nccl", device_id=torch.device("cuda", 0))
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    out = {"machine": machine(), "layers_override": a.layers, "records": []}
    for p in a.plans:
        path = with_layers(Path(p), a.layers)
        for plan in plans_of(path):
            ckpt = checkpoint_for(plan, cache, workdir)
            try:
                rec = profile_plan(path, plan, ckpt, a.steps, a.variants, a.rounds)
            except Exception as e:  # keep the other plans' records
                rec = {"plan": f"{path.name}:{plan.name}", "error": f"{type(e).__name__}: {e}"}
            out["records"].append(rec)
            print(json.dumps({k: rec.get(k) for k in ("plan", "error")}), file=sys.stderr)
            for mode in ("graph", "eager"):
                if mode in rec:
                    r = rec[mode]
                    print(f"  {mode}: {r['step_ms_median']:.3f} ms, {r['kernels_per_step']:.0f} "
                          f"kernels, busy {r.get('busy_us_per_step', 0):.0f} us, "
                          f"gemm {r.get('gemm_read_TBps')}", file=sys.stderr)
                    for g, v in sorted(r.get("groups", {}).items()):
                        print(f"     {g}: {v['count_per_step']:.0f} x, "
                              f"{v['us_per_step']:.0f} us", file=sys.stderr)
            for v in rec.get("variants", []):
                print(f"  variant {v['variant']!r}: {v['step_ms_median']:.4f} ms, "
                      f"{v.get('kernels_per_step', 0):.0f} kernels, span "
                      f"{v.get('span_us_per_step', 0):.1f} us, busy "
                      f"{v.get('busy_us_per_step', 0):.1f} us", file=sys.stderr)
            Path(a.out).write_text(json.dumps(out, indent=1))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
