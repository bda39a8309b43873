"""Limits that agree with the verdict: headroom respects every `require`, tensor- and
expert-parallel groups across nodes are warned about with their cost, and a model whose weights
alone do not fit is told how many devices they need."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planc.compiler.lower import lower
from planc.cost.time import collective_estimate, rates_of
from planc.diagnostics import Diagnostics
from planc.pipeline import check_paths, check_plan
from planc.verifier.headroom import headroom
from tests.helpers import CLUSTER, MODEL, check_text, plan_text, resolve_text, verdict

PP_TP = "  mesh pp=2, tp=8\n  shard layers over pp microbatches 8\n" \
        "  shard heads, kv_heads, ffn over tp\n"


def _status_at_batch(text: str, batch: int) -> str:
    result, _ = check_text(text.replace("batch 128", f"batch {batch}"))
    return result.status


@pytest.mark.parametrize("require", ["  require memory <= 50%\n", "  require latency <= 1 s\n"])
def test_the_largest_batch_headroom_reports_is_proved_and_one_step_more_is_not(require):
    text = plan_text(PP_TP + require)
    spec, _ = resolve_text(text)
    largest = min(headroom(spec.plans[0])["batch"].values())
    assert largest > 128
    assert _status_at_batch(text, largest) == "proved"
    assert _status_at_batch(text, largest + 8) == "violated"  # step: 8 microbatches x dp 1


def test_a_tensor_parallel_group_across_nodes_warns_with_its_estimated_cost():
    text = plan_text("  mesh tp=16\n  shard heads, ffn over tp\n")
    spec, _ = resolve_text(text)
    plan = spec.plans[0]
    diags = Diagnostics()
    check_plan(plan, diags)
    [w] = [d for d in diags.items if d.code == "W102"]
    assert w.severity == "warning" and "tensor-parallel" in w.message
    g = lower(plan)
    crossing = [c for c in g.classes[0].collectives if c.op == "all_reduce"]
    cost = sum(collective_estimate(c, rates_of(plan)) for c in crossing)
    assert f"{cost:.4g} s" in w.message
    inside = plan_text(PP_TP)
    spec2, _ = resolve_text(inside)
    diags2 = Diagnostics()
    check_plan(spec2.plans[0], diags2)
    assert not [d for d in diags2.items if d.code == "W102"]


def _weights_bytes(layers: int, hidden: int, heads: int, kv: int, hd: int, ffn: int) -> int:
    per_layer = hidden * hd * (2 * heads + 2 * kv) + 3 * hidden * ffn + 2 * hidden
    return 2 * (layers * per_layer + hidden)  # bf16


BIG = MODEL.replace("layers   16", "layers   160").replace("hidden   4096", "hidden   8192") \
    .replace("heads    32", "heads    64").replace("ffn      16384", "ffn      28672")


def test_weights_that_alone_exceed_the_device_say_how_many_devices_they_need():
    text = plan_text("  mesh tp=1\n  shard heads, kv_heads, ffn over tp\n", model=BIG)
    result, _ = check_text(text)
    v = verdict(result, "V400")
    assert v.status == "violated"
    spec, _ = resolve_text(text)
    dev = spec.plans[0].cluster.device
    need = -(-_weights_bytes(160, 8192, 64, 8, 128, 28672) // (dev.memory - dev.reserve))
    assert f"the weights alone need at least {need} devices" in v.obligation.hint
    assert "reduce the batch" not in v.obligation.hint


def test_an_infeasible_hole_plan_whose_weights_need_more_than_the_cluster_says_so(tmp_path):
    small = CLUSTER.replace("x 16", "x 2").replace("node 8", "node 2")
    text = plan_text("  mesh tp=?\n  shard heads, kv_heads, ffn over tp\n", model=BIG,
                     cluster=small)
    f = tmp_path / "h.plan"
    f.write_text(text)
    [d] = [d for d in check_paths([f]).diagnostics if d.code == "E093"]
    assert "the weights alone need at least" in d.hint and "the cluster has 2" in d.hint


def test_headroom_for_a_plan_without_requires_is_unchanged_by_claims():
    spec, _ = resolve_text(plan_text(PP_TP))
    plan = spec.plans[0]
    h = headroom(plan)
    b = min(h["batch"].values())
    g = lower(replace(plan, workload=replace(plan.workload, batch=b)))
    assert all(c.memory["peak"] <= c.memory["capacity"] for c in g.classes)
    g2 = lower(replace(plan, workload=replace(plan.workload, batch=b + 8)))
    assert any(c.memory["peak"] > c.memory["capacity"] for c in g2.classes)


def test_headroom_and_maximize_batch_agree_under_a_memory_require(tmp_path):
    """Was: headroom said 150 where `require memory <= 90%` fails and `maximize batch` gave 129."""
    text = plan_text(PP_TP + "  require memory <= 50%\n")
    spec, _ = resolve_text(text)
    largest = min(headroom(spec.plans[0])["batch"].values())
    f = tmp_path / "h.plan"
    f.write_text(text.replace("batch 128", "batch ?").replace(
        "require memory <= 50%", "require memory <= 50%\n  maximize batch"))
    [p] = check_paths([f]).plans
    assert p.extra["synthesis"]["values"]["batch"] == largest
