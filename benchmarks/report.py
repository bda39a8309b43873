"""Results JSON (benchmarks/results/*.json from gpu_bench.py and peers.py) -> a markdown table
and a plot beside them: benchmarks/results/RESULTS.md and benchmarks/results/gpu.png.

    python benchmarks/report.py benchmarks/results/h200*.json

Each plan's table row is its latest run (earlier runs stay in their JSON files).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent / "results"


def gb(x: float | None) -> str:
    return "-" if not x else f"{x / 1e9:.3f}"


def todays_model(r: dict) -> None:
    """What the compiler at this commit predicts for the run's plan, under r["today"]: a column
    of its own, labelled as today's. The predictions stored with the run (predicted_*, and the
    errors against them) are what was predicted when the run was made and are never replaced:
    a model tuned after a run would otherwise be shown as if it had predicted it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from planc.compiler.lower import lower
    from planc.backends.torch.runconfig import to_run_config
    from planc.cost.time import rates_of, step_estimate
    from planc.diagnostics import Diagnostics
    from planc.pipeline import load as load_spec

    f, name = r["plan"].split(":")
    spec, _ = load_spec(Path(__file__).parent / "plans" / f, Diagnostics())
    plan = next((p for p in spec.plans if p.name == name), None) if spec else None
    if plan is None:
        return  # the plan changed or is gone: no today's column for this run
    g = lower(plan)
    r["today"] = {"peak": list(to_run_config(plan, g).predicted_peak),
                  "time_s": step_estimate(g, rates_of(plan))}
    if g.phase == "decode":
        r["today"]["tpot_ms"] = step_estimate(g, rates_of(plan), phase="decode") * 1e3
    r.setdefault("microbatches", g.microbatches)  # a plan fact (older runs did not store it)


def today(r: dict, key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
    v = r.get("today", {}).get(key)
    return "-" if v is None else f"{v * scale:{fmt}}"


def run_order(d: dict) -> tuple:
    """When a run was made, as far as its file says: its date, then the number in its file name
    (`..._run4...`: the runs of one day are numbered), then the name; a plan's row is its latest
    run. (A glob's alphabetical order put a 2026-11-22 run after 2026-11-29 ones.)"""
    name = d["records"][0]["_file"] if d.get("records") else ""
    m = re.search(r"_run(\d+)", name)
    return (d.get("date") or "", int(m.group(1)) if m else 0, name)


def load(paths: list[str]) -> tuple[list[dict], list[dict]]:
    runs, peers = [], []
    for p in paths:
        d = json.loads(Path(p).read_text())
        if "records" in d and not all("plan" in r and "strategy" in r for r in d["records"]):
            continue  # a micro-benchmark's or a profile's rows (decode_attention_h200.py,
            # decode_gemm_h200.py, decode_profile_h200.py), not plan runs
        if "records" in d:
            for r in d["records"]:
                r["_file"] = Path(p).name
                r["_gpu"] = d.get("gpu")
                todays_model(r)
            runs.append(d)
        else:
            d["_file"] = Path(p).name
            peers.append(d)
    return sorted(runs, key=run_order), peers


def decode_table(runs: list[dict]) -> list[str]:
    recs = [r for r in shown_records(runs) if "predicted_tpot_ms" in r]
    if not recs:
        return []
    out = ["## Decode (greedy, KV cache): TTFT and TPOT", "",
           "| plan | strategy | GPUs | TTFT ms (pred) | TPOT ms | TPOT predicted | TPOT bound | "
           "peak GB (pred) | peak err | TPOT by today's model |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if "error" in r:
            why = "hung under NCCL (launcher timeout)" if "timed out" in r["error"] else \
                r["error"].strip().splitlines()[-1][:60]
            out.append(f"| {r['plan']} | {r['strategy']} | {r['gpus']} | failed: {why} | | | "
                       f"{r['bound_tpot_ms']:.3f} | - ({max(r['predicted_peak']) / 1e9:.2f}) | | "
                       f"{today(r, 'tpot_ms', fmt='.3f')} |")
            continue
        mp = max(x for x in r["measured_peak"] if x)
        out.append(
            f"| {r['plan']} | {r['strategy']} | {r['gpus']} | {r['ttft_ms']:.1f} "
            f"({r['predicted_ttft_ms']:.1f}) | {r['tpot_ms']:.3f} | {r['predicted_tpot_ms']:.3f} | "
            f"{r['bound_tpot_ms']:.3f} | {mp / 1e9:.3f} ({max(r['predicted_peak']) / 1e9:.3f}) | "
            f"{r.get('peak_error', 0) * 100:.2f}% | {today(r, 'tpot_ms', fmt='.3f')} |")
    return out


def kernel(r: dict) -> str:
    """SDPA's backend, or the ring's block kernel (runs before gpu_bench recorded it used the
    kernel `lse_backend` picked then: cuDNN from h200x4_prefill_run6 on, flash before)."""
    if r.get("ring_block_kernel"):
        return f"ring: {r['ring_block_kernel']}"
    if r["strategy"].startswith("ring"):
        return "ring: flash" if r["_file"].startswith("h200x2_") else "ring: cudnn"
    return r.get("sdpa_backend") or "-"


def table(runs: list[dict]) -> list[str]:
    out = ["| plan | strategy | GPUs | tokens/s | measured ms | predicted ms | time err | "
           "measured peak GB (max rank) | predicted peak GB | peak err | attention kernel | "
           "ms by today's model |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in shown_records(runs):
        if "predicted_tpot_ms" in r:
            continue  # decode plans have their own table
        if "error" in r:
            out.append(f"| {r['plan']} | {r['strategy']} | {r['gpus']} | failed: "
                       f"{r['error'].splitlines()[-1][:80] if r['error'] else ''} |"
                       f" | | | | | | | {today(r, 'time_s', 1e3)} |")
            continue
        mp = max(x for x in r["measured_peak"] if x) if any(r["measured_peak"]) else None
        pp = max(r["predicted_peak"])
        out.append(
            f"| {r['plan']} | {r['strategy']} | {r['gpus']} | {r['tokens_per_s']:,.0f} | "
            f"{r['measured_time_s'] * 1e3:.2f} | {r['predicted_time_s'] * 1e3:.2f} | "
            f"{r.get('time_error', 0) * 100:+.1f}% | {gb(mp)} | {gb(pp)} | "
            f"{r.get('peak_error', 0) * 100:.1f}% | {kernel(r)} | {today(r, 'time_s', 1e3)} |")
    return out


def summary(runs: list[dict]) -> list[str]:
    latest: dict[str, dict] = {}  # each plan once: its latest run
    for d in runs:
        for r in d["records"]:
            if "error" not in r and "predicted_tpot_ms" not in r:
                latest[r["plan"]] = r
    recs = list(latest.values())
    if not recs:
        return []
    terr = [abs(r["time_error"]) for r in recs if "time_error" in r]
    perr = [r["peak_error"] for r in recs if "peak_error" in r]
    lines = [f"- step time: median |predicted - measured| / measured = "
             f"{statistics.median(terr) * 100:.1f}% over {len(terr)} plans" if terr else "",
             f"- per-rank peak memory: worst error {max(perr) * 100:.2f}%, median "
             f"{statistics.median(perr) * 100:.2f}% over {len(perr)} plans" if perr else ""]
    dec = [r for r in latest_records(runs).values() if "predicted_tpot_ms" in r]
    if dec:
        derr = [r["peak_error"] for r in dec if "peak_error" in r]
        tperr = [abs(r["predicted_tpot_ms"] - r["tpot_ms"]) / r["tpot_ms"] for r in dec]
        lines += [f"- decode per-rank peak memory: worst error {max(derr) * 100:.2f}%, median "
                  f"{statistics.median(derr) * 100:.2f}% over {len(derr)} plans; TPOT: median "
                  f"|predicted - measured| / measured = {statistics.median(tperr) * 100:.0f}%"]
    body = [x for x in lines if x]
    return ["Errors of the predictions stored with each run (made when it ran):", "", *body] \
        if body else []


SEED_PAIRS = [  # (seed, strategy plan, baseline plan, the seed's claimed ratio and its source)
    ("002 ring attention", "ring2", "tp2", 1.45 / 1.20, "1.45M vs 1.20M tokens/s"),
    ("002 ring attention", "ring4", "tp4", 1.45 / 1.20, "1.45M vs 1.20M tokens/s"),
    ("002 ring attention", "ring4_64k", "tp4_64k", 1.45 / 1.20, "1.45M vs 1.20M tokens/s"),
    ("001 head x head_dim", "headdim_1x2", "tp2_2k", 1.58 / 1.20, "1.58M vs 1.20M tokens/s"),
    ("001 head x head_dim", "headdim_2x2", "tp4_2k", 1.58 / 1.20, "1.58M vs 1.20M tokens/s"),
    ("004 expert parallel", "ep2", "moe_tp2", 450_000 / 120_000, "450k vs 120k tokens/s"),
    ("004 expert parallel", "ep4", "moe_tp4", 450_000 / 120_000, "450k vs 120k tokens/s"),
    ("000/003 layer-wise", "layerwise_l2", "small_tp2", 15_360 / 12_800, "15,360 vs 12,800"),
    ("000/003 layer-wise", "layerwise4_l2", "small_tp4", 15_360 / 12_800, "15,360 vs 12,800"),
    ("(TP x PP forms)", "pp2_tp2", "tp4_4layers", None, "-"),
]
# Peer runs made with the flash-attention ring blocks and float32 merges (runtime before the
# cuDNN blocks): their ring efficiencies are history, not the current kernel.
PRE_CUDNN_RING = {"h200x2_peers_run1.json", "h200x2_peers_run2.json"}
# Peer runs of the ring kernel as the runtime runs it now (cuDNN blocks, one CUDA work queue);
# the others go to a history section with their settings.
CURRENT_RING = {"h200x4_ring2_maxconn1_run10.json", "h200x4_ring_maxconn1_run9.json"}
RING_SETTINGS = {
    **{f: ", flash blocks and float32 merges" for f in PRE_CUDNN_RING},
    "h200x4_peers2_run7.json": ", default CUDA work queues",
    "h200x4_peers_run5.json": ", default CUDA work queues",
    "h200x4_ring_default_run8.json": ", default CUDA work queues",
    "h200x4_ring_default_run9.json": ", default CUDA work queues",
    "h200x4_ring_hiprio_run8.json": ", TORCH_NCCL_HIGH_PRIORITY=1",
    "h200x4_ring_nch4_run9.json": ", NCCL_MAX_NCHANNELS=4",
    "h200x4_ring_maxconn1_run9.json": ", CUDA_DEVICE_MAX_CONNECTIONS=1",
    "h200x4_ring2_maxconn1_run10.json": ", CUDA_DEVICE_MAX_CONNECTIONS=1",
}
L2_PAIRS = [("decode_layerwise_fits", "decode_layerwise_streams"),
            ("decode_layerwise4_fits", "decode_layerwise4_streams")]


def latest_records(runs: list[dict]) -> dict[str, dict]:
    """Each plan's latest successful record, by plan name."""
    out: dict[str, dict] = {}
    for d in runs:
        for r in d["records"]:
            if "error" not in r:
                out[r["plan"].split(":")[1]] = r
    return out


def shown_records(runs: list[dict]) -> list[dict]:
    """Each plan's latest success, and failures of plans that never ran; by GPUs, then plan."""
    latest = latest_records(runs)
    keep = {id(r) for r in latest.values()}
    recs = [r for d in runs for r in d["records"]
            if id(r) in keep or ("error" in r and r["plan"].split(":")[1] not in latest)]
    return sorted(recs, key=lambda r: (r["gpus"], r["plan"]))


def l2_table(v: dict) -> list[str]:
    out = ["", f"{v['peer']}: weight bytes read per second (each set re-read back to back, so a "
           "set that fits the 60 MB L2 could be read from it)", "",
           "| weights MB | CUDA graph us / layer | GB/s | eager us / layer | GB/s |",
           "|---|---|---|---|---|"]
    for r in v["rows"]:
        out.append(f"| {r['weight_bytes'] / 1e6:.1f} | {r.get('graph_s', 0) * 1e6:.1f} | "
                   f"{r.get('graph_gb_per_s', 0):,.0f} | {r['eager_s'] * 1e6:.1f} | "
                   f"{r['eager_gb_per_s']:,.0f} |")
    return out + [""]


def comparisons(runs: list[dict], peers: list[dict]) -> list[str]:
    latest = {k: r for k, r in latest_records(runs).items() if "predicted_tpot_ms" not in r}
    tps = {k: r["tokens_per_s"] for k, r in latest.items()}
    out = ["## Seed strategies against the TP x PP baseline form, same GPUs, model, workload", "",
           "| seed | GPUs | strategy / baseline | measured ratio | the seed's claimed ratio |",
           "|---|---|---|---|---|"]
    for seed, a, b, claim, src in SEED_PAIRS:
        if a in tps and b in tps:
            said = f"{claim:.2f}x ({src})" if claim else src
            out.append(f"| {seed} | {latest[a]['gpus']} | {a} / {b} | {tps[a] / tps[b]:.2f}x | "
                       f"{said} |")
    out += ["", "## Targets", ""]
    ring_history: list[str] = []
    newest = {p.get("world"): p["_file"] for p in peers if "dtensor_tp" in p}
    for peer in peers:
        w, f = peer.get("world"), peer["_file"]
        if "dtensor_tp" in peer and f"tp{w}" in tps and newest[w] == f:
            r = tps[f"tp{w}"] / peer["dtensor_tp"]["tokens_per_s"]
            out.append(f"- tensor parallel {w} against torch DTensor (same layers, same input, "
                       f"{f}): {r:.2f}x (target >= 1.0x)")
        for mode in ("ring", "ring64k"):
            if mode in peer:
                rg = peer[mode]
                line = (f"- ring attention kernel over {w} GPUs at {rg['seq']:,} tokens ({f}"
                        f"{RING_SETTINGS.get(f, '')}): {rg['efficiency'] * 100:.0f}% of the "
                        "ideal (one GPU's causal SDPA / ring size; target >= 80%)")
                (out if f in CURRENT_RING else ring_history).append(line)
        if "a2a" in peer and newest.get(w) == f:
            out.append(f"- expert dispatch + combine over {w} GPUs (all_to_all_single at planc's "
                       f"sizes, {f}): {peer['a2a']['gb_per_s_per_gpu']:.0f} GB/s per GPU "
                       "(target >= 250; of each GPU's rows 1/GPUs stay local)")
    if "pp2" in latest and "stage_microbatch" in latest:
        t_mb = latest["stage_microbatch"]["measured_time_s"]
        ideal = (8 + 2 - 1) * t_mb  # GPipe: (microbatches + stages - 1) x one stage-microbatch
        out.append(f"- pipeline 2 x 8 microbatches: "
                   f"{ideal / latest['pp2']['measured_time_s'] * 100:.1f}% of the ideal schedule "
                   f"((8 + 1) x {t_mb * 1e3:.2f} ms, same run; target >= 90%)")
    for w in (2, 4):
        if f"tp{w}" in tps and "single" in tps:
            out.append(f"- tensor parallel {w} against one GPU on a 32k-token prefill: "
                       f"{tps[f'tp{w}'] / tps['single']:.2f}x (target for 4 GPUs: >= 2.8x)")
    if "layerwise_l2" in tps and "layerwise_streamed" in tps:
        out.append(f"- layer-wise with `fit cache` against the same pipeline without it: "
                   f"{tps['layerwise_l2'] / tps['layerwise_streamed']:.2f}x; the two programs "
                   "are identical (planc cannot pin weights in L2 from PyTorch), so this ratio "
                   "is run-to-run variation of a launch-bound workload")
    if ring_history:
        out += ["", "## Ring kernel: earlier runtimes and other settings", "", *ring_history]
    dec = {k: r for k, r in latest_records(runs).items() if "predicted_tpot_ms" in r}
    pairs = [(dec[a], dec[b]) for a, b in L2_PAIRS if a in dec and b in dec]
    if pairs:
        out += ["", "## Decode: stage weights resident in L2 against streamed from HBM", "",
                "| plan | GPUs | weights per stage MB | TPOT ms | weight bytes read per GPU per "
                "ms of TPOT | fits L2 (60 MB) |", "|---|---|---|---|---|---|"]
        for pair in pairs:
            for r in pair:
                wmax = max(r["stage_weights"])
                nmb = r["microbatches"]  # a stage re-reads its weights once per microbatch
                out.append(f"| {r['plan']} | {r['gpus']} | {wmax / 1e6:.1f} | {r['tpot_ms']:.3f} | "
                           f"{wmax * nmb / r['tpot_ms'] / 1e6:.1f} MB | "
                           f"{'yes' if all(r['cache_resident']) else 'no'} |")
    return out


def plot(runs: list[dict], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in latest_records(runs).values() if "predicted_tpot_ms" not in r]
    if not recs:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [r["plan"].split(":")[1] for r in recs]
    x = range(len(recs))
    a.bar([i - 0.2 for i in x], [r["measured_time_s"] * 1e3 for r in recs], 0.4,
          label="measured")
    a.bar([i + 0.2 for i in x], [r["predicted_time_s"] * 1e3 for r in recs], 0.4,
          label="predicted (estimate)")
    a.set_xticks(list(x), names, rotation=35, ha="right")
    a.set_ylabel("forward step, ms (log scale)")
    a.set_yscale("log")
    a.set_title("Step time: predicted vs measured")
    a.legend()
    mp = [max(v for v in r["measured_peak"] if v) / 1e9 for r in recs]
    pp = [max(r["predicted_peak"]) / 1e9 for r in recs]
    b.scatter(pp, mp)
    for n, px, my in zip(names, pp, mp):
        b.annotate(n, (px, my), fontsize=8, xytext=(3, 3), textcoords="offset points")
    top = max(mp + pp) * 1.1
    b.plot([0, top], [0, top], "k--", lw=0.8, label="prediction = measurement")
    b.set_xlabel("predicted peak per rank, GB")
    b.set_ylabel("torch.cuda.max_memory_allocated, GB")
    b.set_title("Peak memory per rank")
    b.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=120)


def main(paths: list[str]) -> None:
    runs, peers = load(paths)
    lines = ["# GPU benchmark results", "",
             "Generated by `python benchmarks/report.py benchmarks/results/h200*.json`; each "
             "plan's row is its latest run (earlier runs stay in their JSON). "
             "Measured: `planc run --device cuda` (median of 10 repeats after 3 warm-ups, CUDA "
             "events, slowest rank; per-rank torch.cuda.max_memory_allocated). Predicted: what "
             "the compiler predicted when the run was made, stored with it (peak = weights + live "
             "buffers, without the runtime reserve; time = the estimate, not the bound), and the "
             "errors against that. The last column, \"by today's model\", is what the compiler "
             "at this commit predicts for the same plan: later than the run, so not a "
             "prediction of it.", ""]
    for d in runs:
        lines.append(f"Machine: {d.get('machine')} ({d.get('gpus_visible')} x {d.get('gpu')}), "
                     f"torch {d.get('torch')}, {d.get('date')}; file {d['records'][0]['_file']}"
                     if d["records"] else "")
    lines += ["", *table(runs), "", *summary(runs), "", *decode_table(runs), "",
              *comparisons(runs, peers), ""]
    for p in peers:
        lines.append(f"## Peers ({p['_file']}, {p.get('world')} x {p.get('device')})")
        for k, v in p.items():
            if k == "l2_weights":
                lines += l2_table(v)
            elif isinstance(v, dict):
                lines.append(f"- {k}: " + ", ".join(
                    f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}"
                    for a, b in v.items() if not a.startswith("profile")))
        lines.append("")
    lines.append("![predicted vs measured](gpu.png)")
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    plot(runs, HERE / "gpu.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
