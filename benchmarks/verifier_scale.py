"""Verifier scale: a 16,384-GPU, 128-layer MoE plan verified, synthesis over 1,024 GPUs, and a
256 KiB file of 1,846 plans checked (CPU seconds: tests/unit/test_many_plans.py checks the same
file's verdicts, without a clock).

Prints one JSON object (timings in seconds, median of repeats in this process, and the peak
resident memory of the process) and writes the same to benchmarks/results/verifier_scale.json.
Symmetry is what makes this cheap: devices with identical work form one device class (here one
per pipeline stage), so the obligations do not grow with the device count.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planc.pipeline import check_paths  # noqa: E402
from tests.many_plans import many_plans  # noqa: E402

BIG = """
cluster big {
  device H100 x 16384
  node 8
}
model moe128 {
  arch     mixtral
  layers   128
  hidden   8192
  heads    64
  kv_heads 8
  head_dim 128
  ffn      28672
  experts  16
  top_k    2
  dtype    bf16
}
workload w {
  batch 4096
  seq   4096
}
plan dp32_pp16_tp8_ep4 {
  model    moe128
  cluster  big
  workload w
  mesh     dp=32, pp=16, ep=4, tp=8
  shard    batch over dp, ep
  shard    layers over pp microbatches 8
  shard    experts over ep
  shard    heads, kv_heads, ffn over tp
  require  memory <= 95%
}
"""

SYNTH = """
cluster c1024 {
  device H100 x 1024
  node 8
}
model dense {
  arch     llama
  layers   64
  hidden   8192
  heads    64
  kv_heads 8
  head_dim 128
  ffn      28672
  dtype    bf16
}
workload w {
  batch 1024
  seq   8192
}
plan synth1024 {
  model    dense
  cluster  c1024
  workload w
  mesh     dp=?, pp=?, tp=?
  shard    batch over dp
  shard    layers over pp microbatches ?
  shard    heads, kv_heads, ffn over tp
  require  memory <= 90%
  minimize time
}
"""


def timed(text: str, repeats: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "p.plan"
        f.write_text(text)
        times, result = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            result = check_paths([f])
            times.append(time.perf_counter() - t)
        assert result is not None
        p = result.plans[0] if result.plans else None
        info = {"status": p.status if p else "error", "devices": p.devices if p else None,
                "device_classes": len(p.graph.classes) if p and p.graph else None,
                "obligations": len(p.verdicts) if p else None,
                "values": p.extra.get("synthesis", {}).get("values") if p else None,
                "candidates": p.extra.get("synthesis", {}).get("candidates") if p else None,
                "diagnostics": [d.message for d in result.diagnostics]}
        return statistics.median(times), info


def many_plans_cpu_s(count: int, repeats: int) -> float:
    """The median CPU seconds of checking one file of `count` plans (after one warm-up check:
    the grammar and the solver's first start stay out of it)."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "many.plan"
        f.write_text(many_plans(count))
        check_paths([f])
        times = []
        for _ in range(repeats):
            t = time.process_time()
            result = check_paths([f])
            times.append(time.process_time() - t)
            assert len(result.plans) == count
        return statistics.median(times)


def main() -> None:
    verify_s, verify = timed(BIG, 5)
    synth_s, synth = timed(SYNTH, 3)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the two plans'
    many_s = many_plans_cpu_s(1846, 3)
    out = {
        "date": date.today().isoformat(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "verify_16384_gpus_s": round(verify_s, 4),
        "verify": verify,
        "synthesis_1024_gpus_s": round(synth_s, 4),
        "synthesis": synth,
        "check_1846_plans_cpu_s": round(many_s, 4),
        "peak_rss_mb": round(rss_mb, 1),
        "peak_rss_mb_after_1846_plans": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "targets": {"verify_16384_gpus_s": 1.0, "synthesis_1024_gpus_s": 5.0,
                    "check_1846_plans_cpu_s": 5.0, "peak_rss_mb": 500},
    }
    text = json.dumps(out, indent=2, sort_keys=True)
    print(text)
    dest = Path(__file__).parent / "results" / "verifier_scale.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text + "\n")


if __name__ == "__main__":
    main()
