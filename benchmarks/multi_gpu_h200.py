"""Issue 17's two-GPU work on `nvidia-h200-x2` in one driver, everything written under --out.

From the repository root, planc's pure-Python dependencies on PYTHONPATH (the .whl/ wheels,
which git ignores: the device command must carry `.whl`):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    python benchmarks/multi_gpu_h200.py --out $OUT --parts peers,plans --budget 520
    python benchmarks/multi_gpu_h200.py --out $OUT --parts calibrate,llama --budget 520

The two commands are independent (each writes its own checkpoints: /tmp goes with the machine)
and each fits one device command of < 560 s, estimated from earlier runs:
- peers (~75 s: two torchruns) + plans (~420 s: 17 plans at 11-19 s, decode_tp2 ~40 s with its
  compiled static step, its float32 check ~40 s, 8 checkpoints of 14.6 GB in all ~100 s)
  = ~495 s. First: the small TP2 decode's float32 check is the first run of a TP decode step
  in a CUDA graph with NCCL, and the Llama TP2 plans of the second command depend on it.
- calibrate (~30 s: edge_h200's one-GPU calibration took 14 s; two ranks add NCCL start-up)
  + llama (~410 s: the Llama-3-8B checkpoint 116 s, the one-GPU plans 35 / 45 / 55-61 s in
  runs 21-22, the TP2 plans about as long: compile and load dominate) = ~440 s; the decode
  peer then gets what is left of the budget (~70 s a batch, batch 64 first).
Every child runs with NVLink multicast off (planc's NO_MULTICAST_ENV: NCCL_NVLS_ENABLE=0).
--budget stops a step (its whole process tree) when the budget runs out and skips steps that
would start after it, so the command ends with its summary written instead of being killed
(520 s leaves room for the wheels' install, the last step's stop, 10 s, and the tables).

Parts (any subset, run in this order; each step logs a timestamp and its seconds to stderr and
its output to logs/STEP.log, a failing step is recorded in steps_h200x2.json with its log's
tail, and the next one runs):
- calibrate: `planc calibrate --device cuda --gpus 2`: calibrated_h200x2.plan (the device
  block) and calibration_h200x2.json (link rate, collective latency, memory).
- peers: `torchrun --nproc-per-node 2 benchmarks/peers.py`: dtensor_tp, a2a, eager_op,
  lse_kernels into h200x2_peers.json; ring, ring64k with CUDA_DEVICE_MAX_CONNECTIONS=1 (as the
  ring plans run) into h200x2_peers_ring.json.
- plans: gpu_bench.py on every gpu2_*.plan but the Llama-3-8B ones (17 plans), with the
  prediction stored at run time, plus a float32 run of gpu2_decode_tp2.plan with the reference
  check (TP decode in a CUDA graph, its all-reduces captured, against Hugging Face generate):
  h200x2_plans.json.
- llama: gpu_bench.py on gpu1_decode_llama3_8b_b{1,8,64}.plan (GPU 0) and
  gpu2_decode_llama3_8b_tp2_b{1,8,64}.plan in one invocation (one checkpoint for all six):
  h200x2_llama.json; then the one-GPU decode peer (decode_peer.py --shapes llama3_8b, which
  writes after each batch) on the same shape: h200x2_decode_peer.json.
- tables (always last; alone it rebuilds them from files in --out, on any machine, and from
  committed run files given with --records):
  llama_tp2_h200x2.md (batch, one-GPU and TP2 TPOT, their ratio, the predictions stored with
  the runs, the calibrated prediction and its collectives' share, the peer) and
  estimates_h200x2.json / .md (every plan's step time / TTFT / TPOT by planc's cost model on
  the preset device and on the calibrated one, beside the measured ones where present).

The run files are named h200x2_* as report.py's `results/h200*.json` expects; the driver's
own files (calibrated_*, calibration_*, steps_*, estimates_*, llama_tp2_*) are not, so that
report.py does not take them for peers' files when they are committed beside them.

--dry-run prints the commands and runs nothing; with --device-block FILE (a `device` block, as
calibrate writes) the estimates are computed without calibrating.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_bench import plans_of, record

from planc.backends.torch.launch import NO_MULTICAST_ENV, _stop
from planc.compiler.lower import lower
from planc.compiler.resolve import resolve
from planc.cost.time import Efficiency, in_phase, phase_steps, rates_of, step_estimate
from planc.diagnostics import Diagnostics
from planc.grammar.parse import parse_text

PLANS = ROOT / "benchmarks" / "plans"
BATCHES = (1, 8, 64)
LLAMA = [PLANS / f"gpu1_decode_llama3_8b_b{b}.plan" for b in BATCHES] + [
    PLANS / f"gpu2_decode_llama3_8b_tp2_b{b}.plan" for b in BATCHES]
OTHER = sorted(p for p in PLANS.glob("gpu2_*.plan") if "llama3_8b" not in p.name)
CHECKED = PLANS / "gpu2_decode_tp2.plan"  # its float32 run checks tokens against HF
ORDER = ("calibrate", "peers", "plans", "llama")
BLOCK, CALIBRATION = "calibrated_h200x2.plan", "calibration_h200x2.json"
RUNS = ("h200x2_plans.json", "h200x2_llama.json")
MIN_STEP_S = 20  # a step with less budget left than this is skipped, not started


def log(msg: str) -> None:
    print(f"[multi_gpu_h200 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rel(paths: list[Path], flag: str) -> list[str]:
    return [flag, *(str(p.relative_to(ROOT)) for p in paths)]  # the steps run in ROOT


def commands(parts: list[str], out: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, argv, extra environment) of each step of the parts, in ORDER."""
    py, bench = sys.executable, [sys.executable, "benchmarks/gpu_bench.py",
                                 "--machine", "nvidia-h200-x2"]
    torchrun = [py, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "benchmarks/peers.py"]
    steps = {
        "calibrate": [("calibrate", [py, "-m", "planc", "calibrate", "--device", "cuda",
                                     "--gpus", "2", "-o", str(out / BLOCK),
                                     "--json", str(out / CALIBRATION)], {})],
        "peers": [("peers", torchrun + ["--out", str(out / "h200x2_peers.json"), "--modes",
                                        "dtensor_tp,a2a,eager_op,lse_kernels"], {}),
                  # as the ring attention plans run (runtime/dist.cuda_env; README)
                  ("peers_ring", torchrun + ["--out", str(out / "h200x2_peers_ring.json"),
                                             "--modes", "ring,ring64k"],
                   {"CUDA_DEVICE_MAX_CONNECTIONS": "1"})],
        "plans": [("plans", bench + ["--out", str(out / RUNS[0]),
                                     *rel(OTHER, "--plans"), *rel([CHECKED], "--reference")],
                   {})],
        # the decode runs of issue 15 used 3 repeats after 1 warm-up (decode_h200.py)
        "llama": [("llama", bench + ["--out", str(out / RUNS[1]), "--repeats", "3",
                                     "--warmup", "1", *rel(LLAMA, "--plans")], {}),
                  ("decode_peer", [py, "benchmarks/decode_peer.py", "--shapes", "llama3_8b",
                                   "--out", str(out / "h200x2_decode_peer.json")], {})],
    }
    return [s for p in ORDER if p in parts for s in steps[p]]


def run_step(name: str, argv: list[str], extra: dict[str, str], timeout: float | None,
             logs: Path) -> dict:
    """Run one step, its output into logs/NAME.log (its own session, so the budget can stop
    the whole tree)."""
    env = {**os.environ, **NO_MULTICAST_ENV, "PYTHONUNBUFFERED": "1", **extra}
    log(f"{name}: start: {' '.join(f'{k}={v}' for k, v in extra.items())} {' '.join(argv)}")
    t = time.time()
    rec: dict = {"name": name, "argv": argv, "env": extra, "start": time.strftime("%H:%M:%S")}
    logs.mkdir(exist_ok=True)
    with open(logs / f"{name}.log", "wb") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        rec["returncode"] = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)  # planc's own: TERM then KILL every descendant (torchrun's ranks too)
        rec["returncode"], rec["error"] = None, f"stopped: the budget ran out after {timeout:.0f} s"
    except BaseException:  # the driver itself stopped: its child is in another session
        _stop(proc)
        raise
    rec["elapsed_s"] = round(time.time() - t, 1)
    if rec["returncode"] not in (0, None):
        rec["error"] = f"exit {rec['returncode']}"
    if "error" in rec:
        rec["log_tail"] = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
    log(f"{name}: {rec.get('error', 'ok')}, {rec['elapsed_s']} s"
        + (f"; its log ends:\n{rec['log_tail'][-1500:]}" if "error" in rec else ""))
    return rec


def calibrated(path: Path, block: str):  # type: ignore[no-untyped-def]
    """The file's plans on the calibrated device: the block prepended, the cluster's device
    (the block's `from` preset) renamed to it. None when the file names another device."""
    head = next(line for line in block.splitlines() if line.startswith("device "))
    name, base = head.split()[1], head.split()[3]  # device NAME from BASE {
    text, n = re.subn(rf"^(\s*device\s+){base}(\s+x\s)", rf"\g<1>{name}\g<2>",
                      path.read_text(), flags=re.MULTILINE)
    diags = Diagnostics()
    spec = resolve(parse_text(block + text, path.name), diags)
    if n == 0 or diags.has_errors:
        return None
    return spec.plans


def collectives(plan) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Collectives per decode step (of the first device class) and their share of the TPOT
    estimate in ms: planc's estimate minus the same estimate with free collectives."""
    graph, rates = lower(plan), rates_of(plan)
    e = rates.efficiency or Efficiency()
    free = replace(e, collective_latency_s=0.0, graph_collective_latency_s=0.0, link=1e30)
    calls = sum(c.calls for c in graph.classes[0].collectives
                if in_phase(c.after, "decode")) / phase_steps(graph, "decode")
    ms = (step_estimate(graph, rates, e, "decode") - step_estimate(graph, rates, free, "decode"))
    return calls, ms * 1e3


PREDICTED = ("predicted_time_s", "predicted_ttft_ms", "predicted_tpot_ms")


def run_records(out: Path, files: list[Path]) -> dict[str, dict]:
    """Every record of the run files in --out (RUNS) and of `files` (committed runs, e.g.
    benchmarks/results/h200x2_*_runN.json; a later file's record of a plan wins), by plan."""
    records: dict[str, dict] = {}
    for f in [out / r for r in RUNS if (out / r).exists()] + list(files):
        records.update({r["plan"]: r for r in json.loads(f.read_text())["records"]})
    return records


def estimates(out: Path, block: str | None, measured: dict[str, dict]) -> list[dict]:
    """Every plan of the parts by planc's cost model, preset device against calibrated one,
    with what was measured where a run record has it."""
    rows = []
    for path in OTHER + LLAMA:
        cal = {p.name: p for p in (calibrated(path, block) or [])} if block else {}
        for plan in plans_of(path):
            key = f"{path.name}:{plan.name}"
            preset = record(path, plan, {"error": "estimate"})
            row = {"plan": key, "phase": lower(plan).phase,
                   "preset": {k: preset.get(k) for k in PREDICTED if k in preset}}
            if plan.name in cal:
                c = record(path, cal[plan.name], {"error": "estimate"})
                row["calibrated"] = {k: c.get(k) for k in PREDICTED if k in c}
                if row["phase"] == "decode":
                    row["collectives_per_step"], row["calibrated_collectives_ms"] = collectives(
                        cal[plan.name])
            m = measured.get(key, {})
            row["measured"] = {k: m.get(k) for k in ("measured_time_s", "ttft_ms", "tpot_ms",
                                                     "decode_step", "error") if m.get(k)}
            rows.append(row)
    return rows


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def estimates_md(rows: list[dict]) -> list[str]:
    # both estimates are today's model's (re-predictions), not those stored with the runs
    lines = [("| plan | quantity | measured | preset estimate (today's model) | calibrated "
              "estimate (today's model) | preset error | calibrated error |"),
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        qs = ([("TTFT ms", "ttft_ms", "predicted_ttft_ms"), ("TPOT ms", "tpot_ms",
                                                             "predicted_tpot_ms")]
              if r["phase"] == "decode" else [("step ms", "measured_time_s", "predicted_time_s")])
        for label, mk, pk in qs:
            scale = 1e3 if mk == "measured_time_s" else 1.0
            m = r["measured"].get(mk)
            m = m * scale if m else None
            p, c = (r.get(k, {}).get(pk) for k in ("preset", "calibrated"))
            p, c = (x * scale if x is not None else None for x in (p, c))
            err = [_f((x - m) / m * 100, "+.1f") + "%" if x and m else "-" for x in (p, c)]
            lines.append(f"| {r['plan']} | {label} | {_f(m)} | {_f(p)} | {_f(c)} | {err[0]} | "
                         f"{err[1]} |")
    return lines


def llama_table(out: Path, rows: list[dict], measured: dict[str, dict]) -> list[str]:
    """Batch, one-GPU and TP2 TPOT, their ratio, the stored predictions, the calibrated one."""
    recs = {key.split(":")[0]: r for key, r in measured.items()}
    est = {r["plan"].split(":")[0]: r for r in rows}
    peer = {}
    if (out / "h200x2_decode_peer.json").exists():
        peer = {r["batch"]: r for r in json.loads((out / "h200x2_decode_peer.json").read_text())
                .get("rows", []) if "tpot_ms" in r}
    lines = [("| batch | 1-GPU TPOT ms | TP2 TPOT ms | TP2 / 1-GPU | 1-GPU stored prediction "
              "| TP2 stored prediction | TP2 calibrated prediction (today's model) | of which collectives "
              "(per step) | 1-GPU peer TPOT ms | TP2 decode step | 1-GPU / TP2 TTFT ms |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in BATCHES:
        one = recs.get(f"gpu1_decode_llama3_8b_b{b}.plan", {})
        tp = recs.get(f"gpu2_decode_llama3_8b_tp2_b{b}.plan", {})
        e = est.get(f"gpu2_decode_llama3_8b_tp2_b{b}.plan", {})
        t1, t2 = one.get("tpot_ms"), tp.get("tpot_ms")
        coll = (f"{_f(e['calibrated_collectives_ms'])} ms ({e['collectives_per_step']:.0f})"
                if "calibrated_collectives_ms" in e else "-")
        err = "".join(f" ({r['error'][-60:]!r})" for r in (one, tp) if r.get("error"))
        lines.append(
            f"| {b}{err} | {_f(t1)} | {_f(t2)} | {_f(t2 / t1 if t1 and t2 else None)} | "
            f"{_f(one.get('predicted_tpot_ms'))} | {_f(tp.get('predicted_tpot_ms'))} | "
            f"{_f(e.get('calibrated', {}).get('predicted_tpot_ms'))} | {coll} | "
            f"{_f(peer.get(b, {}).get('tpot_ms'))} | {tp.get('decode_step') or '-'} | "
            f"{_f(one.get('ttft_ms'), '.1f')} / {_f(tp.get('ttft_ms'), '.1f')} |")
    return lines


def tables(out: Path, block_file: Path | None, records: list[Path] | None = None) -> None:
    block_file = block_file or (out / BLOCK if (out / BLOCK).exists() else None)
    measured = run_records(out, records or [])
    rows = estimates(out, block_file.read_text() if block_file else None, measured)
    (out / "estimates_h200x2.json").write_text(json.dumps(
        {"device_block": str(block_file) if block_file else None, "rows": rows}, indent=1))
    est = estimates_md(rows)
    (out / "estimates_h200x2.md").write_text("\n".join(est) + "\n")
    lt = llama_table(out, rows, measured)
    (out / "llama_tp2_h200x2.md").write_text("\n".join(lt) + "\n")
    print("\n".join(lt + [""] + est))
    failed = [f"{r['plan']}: {r['measured']['error'][-200:]!r}" for r in rows
              if r["measured"].get("error")]
    if failed:
        print("\nfailed runs:\n" + "\n".join(failed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="a directory ($OUT on the device machine)")
    ap.add_argument("--parts", default=",".join(ORDER),
                    help=f"comma-separated, of {', '.join(ORDER)}, tables")
    ap.add_argument("--budget", type=float, help="seconds for the whole command (see above)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--device-block", type=Path,
                    help="a calibrated device block for the estimates (default: --out's)")
    ap.add_argument("--records", type=Path, nargs="*", default=[],
                    help="tables: run files besides --out's (committed runs, later wins)")
    a = ap.parse_args()
    # a SIGTERM (the device command's limit) stops the running step's tree, as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parts = a.parts.split(",")
    if unknown := set(parts) - {*ORDER, "tables"}:
        ap.error(f"unknown parts {sorted(unknown)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start, steps = time.time(), []
    summary = out / "steps_h200x2.json"
    if a.dry_run:
        print("# every step with " + " ".join(f"{k}={v}" for k, v in NO_MULTICAST_ENV.items()))
    for name, argv, extra in commands(parts, out):
        if a.dry_run:
            print(" ".join([*(f"{k}={v}" for k, v in extra.items()), *argv]))
            continue
        left = None if a.budget is None else a.budget - (time.time() - start)
        if left is not None and left < MIN_STEP_S:
            steps.append({"name": name, "argv": argv, "error": "skipped: no budget left"})
            log(f"{name}: skipped, {left:.0f} s of the budget left")
        else:
            steps.append(run_step(name, argv, extra, left, out / "logs"))
        summary.write_text(json.dumps({"machine": "nvidia-h200-x2", "parts": parts,
                                       "budget_s": a.budget, "steps": steps}, indent=1))
    if a.dry_run and not a.device_block:
        return
    t = time.time()
    tables(out, a.device_block, a.records)
    log(f"tables: {time.time() - t:.1f} s; all: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
