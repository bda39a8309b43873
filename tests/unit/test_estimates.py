"""`planc check` shows estimates beside the sound bounds, and synthesis picks the plan with the
best estimate under the objective: checked by brute force over small spaces."""

from __future__ import annotations

import json
from functools import cache

import pytest

from planc.cli import main
from planc.compiler.lower import lower
from planc.cost.time import rates_of, step_estimate
from planc.pipeline import check_paths
from tests.helpers import MODEL, check_text, plan_text, resolve_text

DECODE = """
workload w {
  batch    8
  phase    decode
  context  1024
  generate 16
}
"""
MODEL_V = MODEL.replace("  dtype", "  vocab    32000\n  dtype")  # decode needs an lm_head
CLUSTER8 = "cluster c {\n  device H100 x 8\n  node 8\n}\n"
HOLES = ("  mesh pp=?, tp=?\n  shard layers over pp microbatches ?\n"
         "  shard heads, kv_heads, ffn over tp\n")


def _run(tmp_path, text: str, capsys, *args: str) -> str:  # type: ignore[no-untyped-def]
    f = tmp_path / "p.plan"
    f.write_text(text)
    main(["check", str(f), *args])
    return capsys.readouterr().out


def test_check_prints_a_prefill_estimate_beside_its_bound(tmp_path, capsys):
    text = plan_text("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n")
    out = _run(tmp_path, text, capsys)
    [line] = [ln for ln in out.splitlines() if ln.strip().startswith("estimated:")]
    assert "tokens/s" in line and "sound bound: step >=" in line
    doc = json.loads(_run(tmp_path, text, capsys, "--format", "json"))
    perf = doc["plans"][0]["performance"]
    spec, _ = resolve_text(text)
    g = lower(spec.plans[0])
    assert perf["estimate"]["step_s"] == pytest.approx(step_estimate(g, rates_of(spec.plans[0])))
    est = perf["estimate"]
    assert est["tokens_per_s"] == pytest.approx(128 * 2048 / est["step_s"])
    assert perf["bound"]["step_s"] <= perf["estimate"]["step_s"]


def test_check_prints_ttft_tpot_and_tokens_per_s_of_a_decode_plan(tmp_path, capsys):
    text = plan_text("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n", MODEL_V, CLUSTER8,
                     DECODE)
    doc = json.loads(_run(tmp_path, text, capsys, "--format", "json"))
    est = doc["plans"][0]["performance"]["estimate"]
    spec, _ = resolve_text(text)
    g = lower(spec.plans[0])
    rates = rates_of(spec.plans[0])
    ttft, tpot = step_estimate(g, rates), step_estimate(g, rates, phase="decode")
    assert est["ttft_s"] == pytest.approx(ttft) and est["tpot_s"] == pytest.approx(tpot)
    assert est["tokens_per_s"] == pytest.approx(8 * 16 / (ttft + 15 * tpot))
    out = _run(tmp_path, text, capsys)
    assert any("TTFT" in ln and "TPOT" in ln and "sound bound" in ln for ln in out.splitlines())


@cache
def _feasible() -> dict:  # type: ignore[type-arg]
    """Every (pp, tp, microbatches) of the decode plan that the verifier proves, with its graph
    and rates (brute force: each one lowered and verified on its own)."""
    out = {}
    for pp in (1, 2, 4, 8):
        for tp in (1, 2, 4, 8):
            if pp * tp > 8:
                continue
            for mb in (1, 2, 4, 8):
                body = (f"  mesh pp={pp}, tp={tp}\n  shard layers over pp microbatches {mb}\n"
                        "  shard heads, kv_heads, ffn over tp\n")
                text = plan_text(body, MODEL_V, CLUSTER8, DECODE)
                result, _ = check_text(text)
                if result is None or result.status != "proved":
                    continue
                spec, _ = resolve_text(text)
                out[(pp, tp, mb)] = (lower(spec.plans[0]), rates_of(spec.plans[0]))
    return out


def _tpot(g, rates) -> float:  # type: ignore[no-untyped-def]
    return step_estimate(g, rates, phase="decode")


def _ttft(g, rates) -> float:  # type: ignore[no-untyped-def]
    return step_estimate(g, rates)


def _neg_throughput(g, rates) -> float:  # type: ignore[no-untyped-def]
    return -g.batch * g.generate / (step_estimate(g, rates)
                                    + (g.generate - 1) * step_estimate(g, rates, phase="decode"))


@pytest.mark.parametrize("objective,metric", [
    ("", _tpot),  # the decode default: TPOT
    ("minimize tpot", _tpot),
    ("minimize ttft", _ttft),
    ("maximize throughput", _neg_throughput),
])
def test_decode_holes_choose_the_best_estimate_among_every_feasible_plan(
        tmp_path, objective, metric):
    text = plan_text(HOLES + (f"  {objective}\n" if objective else ""), MODEL_V, CLUSTER8,
                     DECODE)
    f = tmp_path / "h.plan"
    f.write_text(text)
    [p] = check_paths([f]).plans
    v = p.extra["synthesis"]["values"]
    chosen = (v["mesh.pp"], v["mesh.tp"], v["microbatches"])
    every = {k: metric(g, rates) for k, (g, rates) in _feasible().items()}
    assert chosen in every
    assert every[chosen] == pytest.approx(min(every.values()))
    # the runners-up shown are feasible and no better than the choice
    for alt in p.extra["synthesis"]["alternatives"]:
        a = alt["values"]
        key = (a["mesh.pp"], a["mesh.tp"], a["microbatches"])
        assert every[key] >= every[chosen] - 1e-12


LLAMA70 = """
model m {
  arch     llama
  layers   80
  hidden   8192
  heads    64
  kv_heads 8
  head_dim 128
  ffn      28672
  vocab    128256
  dtype    bf16
}
"""


def test_a_70b_decode_on_8_gpus_prefers_tensor_parallel_to_a_deep_pipeline(tmp_path):
    cluster = "cluster c {\n  device H200 x 8\n  node 8\n}\n"
    work = DECODE.replace("batch    8", "batch    64").replace("1024", "2048")
    text = plan_text(HOLES, model=LLAMA70, cluster=cluster, workload=work)
    f = tmp_path / "h.plan"
    f.write_text(text)
    [p] = check_paths([f]).plans
    v = p.extra["synthesis"]["values"]
    deep = text.replace("pp=?, tp=?", "pp=8, tp=1").replace("microbatches ?", "microbatches 64")
    spec, _ = resolve_text(deep)
    g = lower(spec.plans[0])
    deep_tpot = step_estimate(g, rates_of(spec.plans[0]), phase="decode")
    assert v["mesh.tp"] == 8
    assert p.extra["performance"]["estimate"]["tpot_s"] < deep_tpot
