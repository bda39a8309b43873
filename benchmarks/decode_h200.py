"""Issue 15's one-GPU decode benchmark in one command: planc's decode plans and the
gpt-fast-style peer on the same shapes, in the same run, and one table of the ratios.

On the single-GPU machine (`nvidia-h200`), from the repository root, with planc's pure-Python
dependencies on PYTHONPATH (each step prints its time to stderr):

    PYTHONPATH=/tmp/site:$PWD python benchmarks/decode_h200.py --out $OUT

All of it took about 11 minutes in run 8 (two checkpoints, four plans, the float32 check),
more than one 600 s device command: split it into consecutive commands on the warm machine
(released 30 s after a command ends; /tmp's checkpoints go with it), e.g.
`--parts planc --only b64,single`, then `--parts planc --only b1,b8`, then `--parts peer`.

1. gpu_bench.py on gpu1_decode_llama3_8b_b{1,8,64}.plan and gpu1_decode_single.plan (one random
   checkpoint per model: the three Llama-3-8B plans share one), --repeats 3 --warmup 1:
   $OUT/h200_decode_planc.json, with the prediction stored at run time.
2. decode_peer.py on the same shapes: $OUT/h200_decode_peer.json.
3. The table (shape, batch, planc TPOT, its prediction, peer TPOT, the bandwidth floor,
   planc/peer as a speed-up (peer TPOT / planc TPOT, > 1 when planc is faster), floor/planc,
   floor/peer), printed and written to $OUT/h200_decode_table.md.

`--parts planc` / `--parts peer` run one step (for two device commands if one would run past
its limit); `--table PLANC.json PEER.json` prints the table of files already fetched, anywhere.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (plan file, the peer's shape name, batch): the peer runs the plan's model and workload
REFERENCE_PLAN = "gpu1_decode_single.plan"
PAIRS = [
    ("gpu1_decode_llama3_8b_b1.plan", "llama3_8b", 1),
    ("gpu1_decode_llama3_8b_b8.plan", "llama3_8b", 8),
    ("gpu1_decode_llama3_8b_b64.plan", "llama3_8b", 64),
    ("gpu1_decode_single.plan", "seed_decode_single", 8),
]


def log(msg: str) -> None:
    print(f"[decode_h200 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def step(name: str, cmd: list[str]) -> None:
    t = time.time()
    log(f"{name}: {' '.join(cmd)}")
    rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    log(f"{name}: exit {rc}, {time.time() - t:.0f} s")


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def table(planc: dict, peer: dict) -> list[str]:
    recs = {r["plan"].split(":")[0]: r for r in planc.get("records", [])}
    rows = {(r["name"], r["batch"]): r for r in peer.get("rows", [])}
    hbm = next(iter(rows.values()), {}).get("hbm_bytes_per_s")
    lines = [
        (f"planc: {planc.get('gpu', '?')}, torch {planc.get('torch', '?')}; peer: "
         f"{peer.get('device', '?')}, torch {peer.get('torch', '?')}; floor = (weight bytes "
         f"read + KV bytes at the mean position) / {_f(hbm, '.3g')} B/s"),
        "",
        ("| shape | batch | planc TPOT ms | planc predicted ms | peer TPOT ms | floor TPOT ms "
         "| planc/peer speed-up | floor/planc | floor/peer | planc TTFT ms | peer TTFT ms |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for plan, shape, batch in PAIRS:
        r, p = recs.get(plan, {}), rows.get((shape, batch), {})
        tp, pp, fl = r.get("tpot_ms"), p.get("tpot_ms"), p.get("floor_tpot_ms")
        err = f" ({r['error'][-80:]!r})" if r.get("error") else ""
        lines.append(
            f"| {shape}{err} | {batch} | {_f(tp, '.3f')} | {_f(r.get('predicted_tpot_ms'), '.3f')}"
            f" | {_f(pp, '.3f')} | {_f(fl, '.3f')} | {_f(pp / tp if tp and pp else None)}"
            f" | {_f(fl / tp if tp and fl else None)} | {_f(fl / pp if pp and fl else None)}"
            f" | {_f(r.get('ttft_ms'), '.1f')} | {_f(p.get('ttft_ms'), '.1f')} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="a directory ($OUT on the device machine)")
    ap.add_argument("--parts", default="planc,peer", help="planc, peer or both")
    ap.add_argument("--hbm", type=float, default=4.8e12, help="HBM bytes/s for the floor")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", help="planc part: comma-separated parts of the plan file names "
                    "to run (e.g. b64,single then b1,b8: each set is one command's worth), "
                    "written to h200_decode_planc_<parts>.json; the table merges every "
                    "h200_decode_planc*.json in --out")
    ap.add_argument("--table", nargs=2, metavar=("PLANC_JSON", "PEER_JSON"),
                    help="print the table of these files and run nothing")
    a = ap.parse_args()
    if a.table:
        print("\n".join(table(*(json.loads(Path(f).read_text()) for f in a.table))))
        return
    if not a.out:
        ap.error("--out is required unless --table")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    only = a.only.split(",") if a.only else None
    name = "h200_decode_planc" + ("_" + "_".join(only) if only else "") + ".json"
    planc_json, peer_json = out / name, out / "h200_decode_peer.json"
    parts = a.parts.split(",")
    t = time.time()
    if "planc" in parts:
        files = [p for p, _, _ in PAIRS if only is None or any(o in p for o in only)]
        plans = [str(ROOT / "benchmarks" / "plans" / p) for p in files]
        # the seed plan also runs once in float32 with the reference check (tokens equal to
        # Hugging Face generate: a bf16 run's near-ties are no evidence, docs/strategies.md)
        check = [p for p in plans if p.endswith(REFERENCE_PLAN)]
        step("planc", [sys.executable, "benchmarks/gpu_bench.py", "--machine", "nvidia-h200",
                       "--repeats", str(a.repeats), "--warmup", str(a.warmup),
                       "--out", str(planc_json), "--plans", *plans,
                       *(["--reference", *check] if check else [])])
    if "peer" in parts:
        step("peer", [sys.executable, "benchmarks/decode_peer.py", "--out", str(peer_json),
                      "--hbm", str(a.hbm), "--shapes", "llama3_8b,seed"])
    log(f"all steps: {time.time() - t:.0f} s")
    # a step that failed leaves its file missing: the table shows dashes for it
    merged: dict = {"records": []}
    for f in sorted(out.glob("h200_decode_planc*.json")):  # one per --only command
        d = json.loads(f.read_text())
        merged = {**d, "records": merged["records"] + d.get("records", [])}
    lines = table(merged, json.loads(peer_json.read_text()) if peer_json.exists() else {})
    (out / "h200_decode_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
