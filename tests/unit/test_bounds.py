"""The time bound is sound: no schedule, and no measurement, beats it.

Property tests draw random clusters (devices per node, link rates), models (dense and MoE) and
meshes (tensor, pipeline, data, sequence, head_dim and expert axes, crossing nodes or not) and
check that the bound never exceeds planc's own estimate, which is one schedule that could run.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from planc.compiler.check_structure import check_structure
from planc.compiler.lower import lower
from planc.cost.time import bound_link_bytes, rates_of, step_estimate, step_lower_bound
from planc.diagnostics import Diagnostics
from planc.pipeline import load
from tests.helpers import check_text, plan_text, resolve_text, verdict

ROOT = Path(__file__).resolve().parents[2]
TP16 = "  mesh tp=16\n  shard heads, kv_heads, ffn over tp\n"


def test_tensor_parallel_across_two_nodes_is_not_refuted_at_half_a_million_tokens():
    """The seed baseline's model and workload at TP 16 over two nodes of 8: the inter-node links
    carry only the reduced share of each all-reduce, all in parallel (was refuted at 203k)."""
    seed = (ROOT / "specs" / "seeds" / "baseline.plan").read_text()
    start = seed.index("plan baseline")
    text = seed[:start] + ("plan tp16 {\n  model dense16\n  cluster h100x16\n"
                           "  workload prefill_10k\n  mesh tp=16\n"
                           "  shard heads, kv_heads, ffn over tp\n"
                           "  require throughput >= 500000 tokens/s\n}\n")
    result, _ = check_text(text)
    assert result.status == "proved", [v.obligation.bad for v in result.verdicts
                                       if v.status == "violated"]
    v = verdict(result, "V700")
    assert v.status == "not_refuted" and v.obligation.numbers["bound"] > 500000


def _link_bytes_of(body: str, after: str) -> tuple[int, Fraction, Fraction]:
    """(planc's bytes, bound device bytes, bound inter-node bytes per link) of the first
    collective that follows op `after` in the plan's first device class."""
    spec, _ = resolve_text(plan_text(body))
    g = lower(spec.plans[0])
    cls = g.classes[0]
    c = next(c for c in cls.collectives if c.after == after)
    return (c.bytes, *bound_link_bytes(c, cls, g.mesh))


def test_the_inter_node_share_of_an_all_reduce_is_spread_over_the_node_s_links():
    b, device, inter = _link_bytes_of(TP16, "o_proj")
    # 16 members, 8 per node: 8/16 of B must enter a node, over its 8 inter-node links
    assert device == Fraction(b * 15, 16)
    assert inter == Fraction(b * 8, 16 * 8)


def test_links_of_one_node_carry_nothing_across_nodes():
    _, _, inter = _link_bytes_of("  mesh pp=2, tp=8\n  shard layers over pp\n"
                                 "  shard heads, kv_heads, ffn over tp\n", "o_proj")
    assert inter == 0


def test_the_head_x_head_dim_bound_does_not_charge_planc_s_float32_scores():
    b, device, _ = _link_bytes_of("  mesh n=4, m=4\n  shard heads, kv_heads over n\n"
                                  "  shard head_dim over m\n  shard ffn over n, m\n",
                                  "attention_scores")
    # at most the partial scores in bf16 (half of planc's float32), all-reduced over 4
    assert device <= Fraction(b, 2) * 3 / 4
    # and at most an all-to-all of the Q, K, V slices into a split by heads and the outputs
    # back: 8 heads and 2 kv heads per device (over n), 32 of head_dim 128 (over m), bf16
    tokens = 128 * 2048
    q, k = tokens * 8 * 32 * 2, tokens * 2 * 32 * 2
    assert device <= Fraction(3, 4) * 2 * (q + k)


# --- random plans -------------------------------------------------------------------------

@st.composite
def random_plans(draw):  # type: ignore[no-untyped-def]
    per_node = draw(st.sampled_from([1, 2, 4, 8]))
    nodes = draw(st.sampled_from([1, 2, 4]))
    n = per_node * nodes
    intra = draw(st.sampled_from([100, 450, 900]))
    inter = draw(st.sampled_from([12, 50, 200]))
    heads = draw(st.sampled_from([8, 16, 32]))
    kv = draw(st.sampled_from([h for h in (1, 2, 4, 8, 16, 32) if heads % h == 0]))
    head_dim = draw(st.sampled_from([32, 64, 128]))
    hidden = heads * head_dim
    moe = draw(st.booleans())
    phase = draw(st.sampled_from(["prefill", "decode"]))
    batch = draw(st.sampled_from([8, 16, 64]))
    seq = draw(st.sampled_from([256, 1024, 4096]))
    strategy = draw(st.sampled_from(["tp", "pp_tp", "dp_tp", "sp", "hd", "ep", "pp"]))
    a = draw(st.sampled_from([d for d in (1, 2, 4, 8, 16) if n % d == 0]))
    b = n // a
    mesh, shards = {
        "tp": (f"t={n}", "shard heads, kv_heads, ffn over t"),
        "pp_tp": (f"p={a}, t={b}", ("shard layers over p microbatches 2\n"
                                    "  shard heads, kv_heads, ffn over t")),
        "dp_tp": (f"d={a}, t={b}", "shard batch over d\n  shard heads, kv_heads, ffn over t"),
        "sp": (f"s={n}", "shard seq over s attention ring"),
        "hd": (f"h={a}, m={b}", "shard heads, kv_heads over h\n  shard head_dim over m"),
        "ep": (f"e={n}", "shard experts, batch over e"),
        "pp": (f"p={n}", "shard layers over p"),
    }[strategy]
    assume(strategy != "ep" or moe)
    experts = f"  experts {max(8, n)}\n  top_k 2\n" if moe else ""
    model = (f"model m {{\n  arch {'mixtral' if moe else 'llama'}\n  layers 16\n"
             f"  hidden {hidden}\n  heads {heads}\n  kv_heads {kv}\n  head_dim {head_dim}\n"
             f"  ffn {4 * hidden}\n{experts}  dtype bf16\n}}\n")
    cluster = (f"cluster c {{\n  device H100 x {n}\n  node {per_node}\n"
               f"  link intra {intra} GB/s\n  link inter {inter} GB/s\n}}\n")
    work = (f"workload w {{\n  batch {batch}\n  phase decode\n  context {seq}\n"
            f"  generate 4\n}}\n" if phase == "decode" else
            f"workload w {{\n  batch {batch}\n  seq {seq}\n}}\n")
    return plan_text(f"  mesh {mesh}\n  {shards}\n", model, cluster, work)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(random_plans())
def test_the_bound_never_exceeds_the_estimate_of_a_schedule_that_runs(text):
    spec, diags = resolve_text(text)
    assume(not diags.has_errors)
    plan = spec.plans[0]
    local = Diagnostics()
    assume(check_structure(plan, local))
    g = lower(plan)
    rates = rates_of(plan)
    for phase in (["prefill", "decode"] if g.phase == "decode" else ["prefill"]):
        bound = step_lower_bound(g, rates, phase)
        assert 0 < bound <= Fraction(step_estimate(g, rates, phase=phase)), (phase, text)


# --- measurements -------------------------------------------------------------------------

def _measured_records() -> list[dict]:
    out = []
    for f in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        doc = json.loads(f.read_text())
        for r in doc.get("records", []) if isinstance(doc, dict) else []:
            if r.get("measured_time_s") and "error" not in r:
                out.append({**r, "file": f.name})
    return out


MEASURED = _measured_records()


def test_there_are_committed_measurements_to_check():
    assert len(MEASURED) >= 20


@pytest.mark.parametrize("rec", MEASURED, ids=[f"{r['file']}:{r['plan']}" for r in MEASURED])
def test_no_committed_gpu_measurement_beats_its_plan_s_bound(rec):
    file, name = rec["plan"].split(":")
    spec, _ = load(ROOT / "benchmarks" / "plans" / file, Diagnostics())
    assert spec is not None
    plan = next(p for p in spec.plans if p.name == name)
    g = lower(plan)
    rates = rates_of(plan)
    if g.phase == "decode":
        assert rec["ttft_ms"] / 1e3 >= step_lower_bound(g, rates, "prefill")
        assert rec["tpot_ms"] / 1e3 >= step_lower_bound(g, rates, "decode")
    else:
        assert rec["measured_time_s"] >= step_lower_bound(g, rates)
