"""The edge run of issue 14 on one H200: does "fits" hold at the largest batch planc says fits?

One command on the single-GPU machine (`nvidia-h200`), from the repository root, with planc's
pure-Python dependencies (lark, pydantic, z3-solver; rich optional) on PYTHONPATH:

    PYTHONPATH=/tmp/site:$PWD python benchmarks/edge_h200.py --out $OUT

Steps (each prints one line to stderr; about 5 minutes in all, under 8):
1. `planc calibrate --device cuda`: writes $OUT/h200_calibrated.plan (a `device H200_calibrated
   from H200` block: usable memory and reserve measured, rates measured) and
   $OUT/h200_calibration.json (every measurement).
2. A Llama-3-8B-shaped decode (32 layers, hidden 4096, 32 heads, 8 KV heads, head_dim 128, ffn
   14336, vocab 128256, bf16; 2,048-token context, 16 generated tokens) on that device with
   `require memory <= 100%`: the largest batch whose `planc check` verdict is PROVED, found by
   doubling then bisecting on the verdict itself. Written to $OUT/edge_h200.plan.
3. `planc run --device cuda --no-reference` of that plan (seeded random weights; one timed
   repeat, no warm-up: the question is memory, and the prefill of ~300 x 2,048 tokens is long).
4. $OUT/edge_h200.json: the batch, the prediction stored before the run (per-rank peak without
   the reserve, and the capacity it was checked against), the measured peak
   (torch.cuda.max_memory_allocated), OOM or not, the peak error, TTFT and TPOT.

Done when: "oom": false and |peak_error| <= 0.01. Commit $OUT's four files under
benchmarks/results/ (edge_h200_*), as the other GPU results are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planc.compiler.resolve import resolve  # noqa: E402
from planc.diagnostics import Diagnostics  # noqa: E402
from planc.grammar.parse import parse_text  # noqa: E402
from planc.pipeline import check_plan  # noqa: E402

LLAMA3_8B_DECODE = """
cluster h200x1 {
  device DEVICE x 1
  node 1
}

model llama3_8b {
  arch     llama
  layers   32
  hidden   4096
  heads    32
  kv_heads 8
  head_dim 128
  ffn      14336
  vocab    128256
  dtype    bf16
}

workload chat {
  batch    BATCH
  phase    decode
  context  2048
  generate 16
}

plan edge {
  model    llama3_8b
  cluster  h200x1
  workload chat
  mesh     dp=1
  require  memory <= 100%
}
"""


def log(msg: str) -> None:
    print(f"[edge_h200 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def plan_text(device_block: str, device: str, batch: int) -> str:
    return device_block + LLAMA3_8B_DECODE.replace("DEVICE", device).replace(
        "BATCH", str(batch))


def proved(text: str):  # type: ignore[no-untyped-def]
    """The plan and its check result when `planc check` proves it, else None."""
    diags = Diagnostics()
    spec = resolve(parse_text(text, "edge_h200.plan"), diags)
    if diags.has_errors or not spec.plans:
        raise SystemExit(f"the edge plan does not resolve: {[d.message for d in diags]}")
    plan = spec.plans[0]
    result = check_plan(plan, Diagnostics())
    return (plan, result) if result is not None and result.status == "proved" else None


def largest_batch(device_block: str, device: str) -> int:
    """The largest batch whose check is PROVED: the verdict is monotone in the batch."""
    lo, hi = 0, 1
    while proved(plan_text(device_block, device, hi)):
        lo, hi = hi, hi * 2
        if hi > 1 << 16:
            raise SystemExit("every batch up to 65,536 fits: is the device block right?")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if proved(plan_text(device_block, device, mid)) else (lo, mid)
    if lo == 0:
        raise SystemExit("not even batch 1 fits the calibrated device")
    return lo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="a directory ($OUT on the device machine)")
    ap.add_argument("--timeout", type=int, default=420, help="seconds for planc run")
    ap.add_argument("--dry-run", metavar="DEVICE_PLAN",
                    help="no GPU: take this device block instead of calibrating, run nothing "
                         "(checks steps 2 and 4 on any machine)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "planc"]
    rec: dict = {"machine": "nvidia-h200", "date": time.strftime("%Y-%m-%d")}

    if a.dry_run:
        block = Path(a.dry_run).read_text()
    else:
        log("1/4 planc calibrate --device cuda")
        t = time.time()
        cal = subprocess.run(py + ["calibrate", "--device", "cuda", "-o",
                                   str(out / "h200_calibrated.plan"), "--json",
                                   str(out / "h200_calibration.json")],
                                 cwd=ROOT, capture_output=True, text=True, check=False)
        if cal.returncode != 0:
            raise SystemExit(f"calibrate failed ({cal.returncode}):\n{cal.stderr[-3000:]}")
        block = (out / "h200_calibrated.plan").read_text()
        rec["calibration"] = json.loads((out / "h200_calibration.json").read_text())
        rec["calibrate_s"] = time.time() - t
        log(f"   memory {rec['calibration']['memory']:,} B, reserve "
            f"{rec['calibration']['reserve']:,} B ({rec['calibrate_s']:.0f} s)")
    device = next(line.split()[1] for line in block.splitlines() if line.startswith("device "))

    log("2/4 the largest batch planc check proves on the calibrated device")
    batch = largest_batch(block, device)
    text = plan_text(block, device, batch)
    (out / "edge_h200.plan").write_text(text)
    _, result = proved(text)
    graph = result.graph
    cls = graph.classes[0]
    over = proved(plan_text(block, device, batch + 1))
    rec.update({
        "batch": batch, "context": 2048, "generate": 16, "batch_plus_one_proved": bool(over),
        # stored before the run: what the check predicted and against what it was checked
        "predicted_peak": cls.memory["peak"] - cls.memory["reserve"],
        "predicted_peak_with_reserve": cls.memory["peak"],
        "capacity": graph.device_capacity,
        "headroom": result.extra.get("headroom_text"),
    })
    log(f"   batch {batch}: predicted peak {rec['predicted_peak']:,} B (+ reserve "
        f"{cls.memory['reserve']:,}) of {graph.device_capacity:,} B")

    if a.dry_run:
        print(json.dumps(rec, indent=1))
        return
    log("3/4 planc run --device cuda --no-reference")
    t = time.time()
    run = subprocess.run(py + ["run", str(out / "edge_h200.plan"), "--device", "cuda",
                               "--format", "json", "--no-reference", "--repeats", "1",
                               "--warmup", "0", "--timeout", str(a.timeout)],
                         cwd=ROOT, capture_output=True, text=True, timeout=a.timeout + 120,
                         check=False)
    rec["run_s"] = time.time() - t
    rec["returncode"] = run.returncode
    tail = (run.stderr or "")[-4000:]
    rec["oom"] = "out of memory" in tail.lower() or "OutOfMemoryError" in tail
    if run.returncode == 0:
        m = json.loads(run.stdout)
        peaks = [r.get("peak_allocated") for r in m.get("ranks", [])]
        rec["measured_peak"] = max(p for p in peaks if p)
        rec["measured_reserved"] = max(r.get("peak_reserved") or 0 for r in m["ranks"])
        rec["peak_error"] = (rec["predicted_peak"] - rec["measured_peak"]) / rec["measured_peak"]
        rec.update({k: m.get(k) for k in ("ttft_ms", "tpot_ms", "output_tokens_per_s")})
        rec["metrics"] = m
    else:
        rec["error"] = tail
    log(f"4/4 oom={rec['oom']} returncode={run.returncode} peak_error={rec.get('peak_error')}")
    (out / "edge_h200.json").write_text(json.dumps(rec, indent=1, default=str) + "\n")
    ok = not rec["oom"] and run.returncode == 0 and abs(rec["peak_error"]) <= 0.01
    print(json.dumps({k: rec.get(k) for k in ("batch", "predicted_peak", "measured_peak",
                                              "peak_error", "oom", "tpot_ms")}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
