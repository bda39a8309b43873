"""The benchmark tools are honest: tables show the prediction stored with each run (today's model
only in a column of its own), and gpu_bench's checkpoints fit the plan that uses them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_table_shows_the_prediction_stored_with_the_run_not_todays(tmp_path):
    report = tool("report")
    measured = 4_000_000_000
    # a run whose prediction (stored when it ran) was 25% high; today's model predicts otherwise
    rec = {"plan": "gpu2_ep2.plan:ep2", "strategy": "expert parallel", "gpus": 2,
           "predicted_peak": [measured * 5 // 4] * 2, "predicted_time_s": 0.010,
           "measured_peak": [measured] * 2, "measured_time_s": 0.020, "tokens_per_s": 1.0,
           "peak_error": 0.25, "time_error": -0.5}
    f = tmp_path / "h200x2_fake.json"
    f.write_text(json.dumps({"machine": "x", "records": [rec]}))
    runs, _ = report.load([str(f)])
    row = next(line for line in report.table(runs) if line.startswith("| gpu2_ep2"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5:10] == ["10.00", "-50.0%", "4.000", "5.000", "25.0%"], cells
    today = runs[0]["records"][0]["today"]
    assert cells[-1] == f"{today['time_s'] * 1e3:.2f}"
    assert max(today["peak"]) != measured * 5 // 4  # the check above could tell them apart
    assert "today's model" in report.table(runs)[0]


def test_a_prefill_and_a_decode_plan_of_one_model_get_their_own_checkpoints(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from safetensors import safe_open

    from tests.helpers import resolve_text

    bench = tool("gpu_bench")
    spec, diags = resolve_text("""
cluster c { device CPU x 1 }
model tiny { layers 1; hidden 32; heads 4; kv_heads 2; head_dim 8; ffn 64; vocab 64; dtype bf16 }
workload pre { batch 1; seq 8 }
workload dec { batch 1; phase decode; context 8; generate 2 }
plan prefill { model tiny; cluster c; workload pre; mesh x=1 }
plan decode { model tiny; cluster c; workload dec; mesh x=1 }
plan prefill2 { model tiny; cluster c; workload pre; mesh y=1 }
""")
    assert not diags.has_errors, [d.message for d in diags]
    cache: dict = {}
    prefill, decode, again = (bench.checkpoint_for(p, cache, tmp_path) for p in spec.plans)
    assert prefill != decode and again == prefill
    with safe_open(str(Path(decode) / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" in set(f.keys())


def test_decode_gemm_shapes_come_from_llama_and_the_seed_plan():
    bench = tool("decode_gemm_h200")
    shapes = bench.all_shapes(bench.SEED_PLAN)
    assert [s.m for s in shapes[:5]] == [64] * 5  # where cuBLAS is furthest from the bandwidth
    seed = {(s.proj, s.n, s.k) for s in shapes if s.model == "seed"}
    # hidden 4096, 32 heads x 128 (kv 32), ffn 16384, vocab 32000; o 4096 x 4096 is Llama's too
    assert seed == {("qkv", 12288, 4096), ("gate_up", 32768, 4096), ("down", 4096, 16384),
                    ("lm_head", 32000, 4096)}
    assert len(shapes) == 3 * (5 + 4)
    rec = {"model": "seed", "proj": "qkv", "m": 8, "n": 12288, "k": 4096, "winner": "planc",
           "candidates": {"cublas": {"us": 30.0, "tbps": 3.36}, "inductor": {"skipped": "x"},
                          "planc": {"us": 25.0, "tbps": 4.03, "config": {
                              "BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 2, "num_warps": 4,
                              "num_stages": 4}}}}
    line = bench.table([rec]).splitlines()[1]
    assert "30.0" in line and "4.03" in line and "64x128 sk2 w4 s4" in line
