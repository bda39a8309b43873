"""Results JSON (benchmarks/results/*.json from gpu_bench.py and peers.py) -> a markdown table
and a plot beside them: benchmarks/results/RESULTS.md and benchmarks/results/gpu.png.

    python benchmarks/report.py benchmarks/results/h200x2_*.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent / "results"


def gb(x: float | None) -> str:
    return "-" if not x else f"{x / 1e9:.3f}"


def current_predictions(r: dict) -> None:
    """Predicted peak and time from the compiler as it is now, for the committed plan: the
    model improves after runs; the measurement stays. (The JSON keeps what was predicted when
    the run was made, as predicted_*_at_run.)"""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from planc.compiler.lower import lower
    from planc.compiler.runconfig import to_run_config
    from planc.cost.time import rates_of, step_estimate
    from planc.diagnostics import Diagnostics
    from planc.pipeline import load as load_spec

    f, name = r["plan"].split(":")
    spec, _ = load_spec(Path(__file__).parent / "plans" / f, Diagnostics())
    plan = next(p for p in spec.plans if p.name == name)
    g = lower(plan)
    r.setdefault("predicted_peak_at_run", r["predicted_peak"])
    r.setdefault("predicted_time_s_at_run", r["predicted_time_s"])
    r["predicted_peak"] = list(to_run_config(plan, g).predicted_peak)
    r["predicted_time_s"] = step_estimate(g, rates_of(plan))
    if "error" not in r:
        pk = [(m, p) for m, p in zip(r["measured_peak"], r["predicted_peak"]) if m]
        r["peak_error"] = max(abs(p - m) / m for m, p in pk)
        r["time_error"] = (r["predicted_time_s"] - r["measured_time_s"]) / r["measured_time_s"]


def load(paths: list[str]) -> tuple[list[dict], list[dict]]:
    runs, peers = [], []
    for p in paths:
        d = json.loads(Path(p).read_text())
        if "records" in d:
            for r in d["records"]:
                r["_file"] = Path(p).name
                r["_gpu"] = d.get("gpu")
                current_predictions(r)
            runs.append(d)
        else:
            d["_file"] = Path(p).name
            peers.append(d)
    return runs, peers


def table(runs: list[dict]) -> list[str]:
    out = ["| plan | strategy | GPUs | tokens/s | measured ms | predicted ms | time err | "
           "measured peak GB (max rank) | predicted peak GB | peak err | SDPA |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in runs:
        for r in d["records"]:
            if "error" in r:
                out.append(f"| {r['plan']} | {r['strategy']} | {r['gpus']} | failed: "
                           f"{r['error'].splitlines()[-1][:80] if r['error'] else ''} |"
                           " | | | | | | |")
                continue
            mp = max(x for x in r["measured_peak"] if x) if any(r["measured_peak"]) else None
            pp = max(r["predicted_peak"])
            out.append(
                f"| {r['plan']} | {r['strategy']} | {r['gpus']} | {r['tokens_per_s']:,.0f} | "
                f"{r['measured_time_s'] * 1e3:.2f} | {r['predicted_time_s'] * 1e3:.2f} | "
                f"{r.get('time_error', 0) * 100:+.1f}% | {gb(mp)} | {gb(pp)} | "
                f"{r.get('peak_error', 0) * 100:.1f}% | {r.get('sdpa_backend') or '-'} |")
    return out


def summary(runs: list[dict]) -> list[str]:
    latest: dict[str, dict] = {}  # each plan once: its latest run
    for d in runs:
        for r in d["records"]:
            if "error" not in r:
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
    return [x for x in lines if x]


def plot(runs: list[dict], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for d in runs for r in d["records"] if "error" not in r]
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
             "Generated by `python benchmarks/report.py benchmarks/results/h200x2_*.json`. "
             "Measured: `planc run --device cuda` (median of 10 repeats after 3 warm-ups, CUDA "
             "events, slowest rank; per-rank torch.cuda.max_memory_allocated). Predicted: the "
             "compiler's placement graph as of this commit (peak = weights + live buffers, "
             "without the runtime reserve; time = the estimate, not the bound).", ""]
    for d in runs:
        lines.append(f"Machine: {d.get('machine')} ({d.get('gpus_visible')} x {d.get('gpu')}), "
                     f"torch {d.get('torch')}, {d.get('date')}; file {d['records'][0]['_file']}"
                     if d["records"] else "")
    lines += ["", *table(runs), "", *summary(runs), ""]
    for p in peers:
        lines.append(f"## Peers ({p['_file']}, {p.get('world')} x {p.get('device')})")
        for k, v in p.items():
            if isinstance(v, dict):
                lines.append(f"- {k}: " + ", ".join(f"{a}={b:.4g}" if isinstance(b, float)
                                                     else f"{a}={b}" for a, b in v.items()))
        lines.append("")
    lines.append("![predicted vs measured](gpu.png)")
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    plot(runs, HERE / "gpu.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
