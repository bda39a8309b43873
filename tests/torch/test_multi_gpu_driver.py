"""benchmarks/multi_gpu_h200.py's tables, from the committed two-GPU run files: the records of
several runs merge with the later one winning, the TP 2 table's ratio is the two runs' own
TPOTs, and the collectives' share is priced as the static step prices them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

driver = pytest.importorskip("multi_gpu_h200")


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps({"records": records}))
    return path


def test_run_records_merge_later_files_win(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _write(out / driver.RUNS[0], [{"plan": "a.plan:a", "tpot_ms": 1.0}])
    later = _write(tmp_path / "later.json", [{"plan": "a.plan:a", "tpot_ms": 2.0},
                                             {"plan": "b.plan:b", "tpot_ms": 3.0}])
    got = driver.run_records(out, [later])
    assert {k: v["tpot_ms"] for k, v in got.items()} == {"a.plan:a": 2.0, "b.plan:b": 3.0}


def test_the_tp2_table_from_the_committed_runs(tmp_path):
    files = [RESULTS / f for f in ("h200x2_llama_run12.json", "h200x2_llama_tp2_run13.json")]
    if not all(f.exists() for f in files):
        pytest.skip("the committed two-GPU runs are not here")
    driver.tables(tmp_path, RESULTS / "calibrated_h200x2_run12.plan", files)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
            for line in (tmp_path / "llama_tp2_h200x2.md").read_text().splitlines()[2:]}
    recs = driver.run_records(tmp_path, files)
    one = recs["gpu1_decode_llama3_8b_b64.plan:decode_llama3_8b_b64"]["tpot_ms"]
    tp2 = recs["gpu2_decode_llama3_8b_tp2_b64.plan:decode_llama3_8b_tp2_b64"]["tpot_ms"]
    assert float(rows["64"][1]) == pytest.approx(one, abs=5e-4)
    assert float(rows["64"][2]) == pytest.approx(tp2, abs=5e-4)
    assert float(rows["64"][3]) == pytest.approx(tp2 / one, abs=5e-4)
    assert rows["8"][1] == "-"  # batch 8 did not run: no number is made up for it


def test_the_collectives_share_uses_the_in_graph_latency():
    """66 collectives a step (65 all-reduces and the argmax's all-gather), each at least the
    static step's in-graph latency and far below the eager one."""
    from planc.cost.time import Efficiency

    plan = driver.plans_of(ROOT / "benchmarks/plans/gpu2_decode_llama3_8b_tp2_b1.plan")[0]
    calls, ms = driver.collectives(plan)
    e = Efficiency()
    assert calls == 66
    assert calls * e.graph_collective_latency_s * 1e3 <= ms
    assert ms < calls * e.collective_latency_s * 1e3
