"""Decode plans: the KV cache is sharded as the plan says (checked by brute force), TTFT and
TPOT bounds refute impossible claims, headroom reports the longest context."""

from __future__ import annotations

import pytest

from planc.compiler.lower import lower
from planc.compiler.presets import CUBLAS_WORKSPACE
from planc.cost import time as cost_time
from planc.layout.schedule import (
    SPLIT_ALIGN,
    static_step_product_parts,
    static_step_qkv_parts,
)
from tests.helpers import MODEL, check_text, line_of, plan_text, resolve_text, verdict

VOCAB_MODEL = MODEL.replace("  dtype    bf16\n", "  dtype    bf16\n  vocab    32000\n")
QKV_BIAS = VOCAB_MODEL.replace("  vocab", "  qkv_bias true\n  vocab")
DECODE = """
workload w {
  batch    32
  phase    decode
  context  2048
  generate 128
}
"""


def decode_plan(body: str) -> str:
    return plan_text(body, model=VOCAB_MODEL, workload=DECODE)


def kv_brute_force(layers: int, batch: int, positions: int, kv_heads: int, head_dim: int) -> int:
    return layers * 2 * batch * positions * kv_heads * head_dim * 2  # K and V, bf16


@pytest.mark.parametrize("body,per_class", [
    ("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n",
     kv_brute_force(16, 32, 2176, 1, 128)),  # 8 kv heads over 8 ranks
    (("  mesh pp=2, tp=4\n  shard layers over pp microbatches 4\n"
      "  shard heads, kv_heads, ffn over tp\n"), kv_brute_force(8, 32, 2176, 2, 128)),
    ("  mesh dp=4, tp=2\n  shard batch over dp\n  shard heads, kv_heads, ffn over tp\n",
     kv_brute_force(16, 8, 2176, 4, 128)),
    ("  mesh sp=4\n  shard seq over sp attention ring\n", kv_brute_force(16, 32, 544, 8, 128)),
])
def test_kv_cache_is_sharded_as_the_plan_says(body, per_class):
    spec, diags = resolve_text(decode_plan(body))
    assert not diags.has_errors, [d.message for d in diags.items]
    g = lower(spec.plans[0])
    assert g.phase == "decode" and g.context == 2048 and g.generate == 128
    assert {c.memory["kv_cache"] for c in g.classes} == {per_class}
    assert all(c.memory["peak"] == sum(c.memory[k] for k in ("weights", "activations",
                                                              "kv_cache", "buffers", "reserve"))
               for c in g.classes)


def test_the_last_stage_holds_the_lm_head():
    spec, _ = resolve_text(decode_plan("  mesh pp=2, tp=8\n  shard layers over pp\n"
                                       "  shard heads, kv_heads, ffn over tp\n"))
    g = lower(spec.plans[0])
    assert [s.name for s in g.classes[-1].shards if s.name == "lm_head.weight"]
    assert not [s.name for s in g.classes[0].shards if s.name == "lm_head.weight"]


def test_tpot_below_the_bound_is_refuted_and_above_it_is_not():
    body = "  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n  require tpot <= X ms\n"
    ok = verdict(check_text(decode_plan(body.replace("X", "100")))[0], "V700")
    assert ok.status == "not_refuted"
    bound_ms = ok.obligation.numbers["bound"] * 1e3
    # independent floor: a step reads each rank's weights (of the embedding table only its
    # tokens' rows: not counted) and the cache's filled positions, 2048 + t at step t, so
    # 2048 + 128 / 2 on average over the steps of the 2048 + 128 allocated
    spec, _ = resolve_text(decode_plan(body.replace("X", "100")))
    cls = lower(spec.plans[0]).classes[0]
    embed = sum(s.bytes for s in cls.shards if s.name == "embed_tokens.weight")
    assert embed > 0 and any(s.name == "lm_head.weight" for s in cls.shards)
    kv_read = cls.memory["kv_cache"] * (2048 + 64) / (2048 + 128)
    floor = (cls.memory["weights"] - embed + kv_read) / 3.35e12 * 1e3
    assert bound_ms >= floor * 0.999
    # and no more than a reading of every byte allocated: the bound may not overcount
    assert bound_ms < (cls.memory["weights"] + cls.memory["kv_cache"]) / 3.35e12 * 1e3
    text = decode_plan(body.replace("X", f"{bound_ms / 2:.6f}"))
    bad = verdict(check_text(text)[0], "V700")
    assert bad.status == "violated" and bad.obligation.span.line == line_of(text, "tpot")


def test_decode_headroom_reports_the_longest_context():
    result, _ = check_text(decode_plan("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n"))
    assert "longest context" in result.extra["headroom_text"]
    longest = min(result.extra["headroom"]["seq"].values())
    text = decode_plan("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n")
    spec, _ = resolve_text(text.replace("context  2048", f"context  {longest}"))
    g = lower(spec.plans[0])
    assert all(c.memory["peak"] <= c.memory["capacity"] for c in g.classes)
    spec, _ = resolve_text(text.replace("context  2048", f"context  {longest + 1}"))
    g = lower(spec.plans[0])
    assert any(c.memory["peak"] > c.memory["capacity"] for c in g.classes)


def test_decode_needs_a_vocabulary():
    text = plan_text("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n", workload=DECODE)
    _, diags = resolve_text(text)
    [d] = [d for d in diags.items if d.code == "E017"]
    assert d.span.line == line_of(text, "  workload w")


def test_a_sequence_sharded_decode_needs_the_prompt_to_divide_not_prompt_plus_generated():
    body = "  mesh sp=4\n  shard seq over sp attention ring\n"
    ok = decode_plan(body).replace("context  2048", "context  16").replace(
        "generate 128", "generate 6")  # 22 positions in all: the prompt (16) is what splits
    assert verdict(check_text(ok)[0], "V207").status == "proved"
    bad = decode_plan(body).replace("context  2048", "context  10").replace(
        "generate 128", "generate 6")  # 16 in all, but a 10-token prompt is not 4 chunks
    assert verdict(check_text(bad)[0], "V207").status == "violated"


def test_the_static_step_fuses_ops_of_the_layer_program(monkeypatch):
    """The ops the static decode step runs inside another op's kernel are ops of the decode
    layer program (a rename there would silently price them as kernels again), and each is
    priced with no kernel start of its own: without the fusion the estimate grows by exactly
    their calls x the per-kernel start. A family with a q/k norm keeps RoPE apart (and gathers
    its tables' rows: two more kernels per step); SiLU x up joins the gate/up GEMM's kernel at
    up to 64 rows of a plain MLP."""
    from planc.cost import time as cost_time
    from planc.layout.schedule import (
        static_step_extra_kernels,
        static_step_fused,
        static_step_gate_up_silu,
    )

    spec, _ = resolve_text(decode_plan("  mesh dp=1\n"))
    plan = spec.plans[0]
    graph = lower(plan)
    assert cost_time.static_decode(graph) and not cost_time.qk_norm_of(graph)
    assert cost_time.dense_mlp_of(graph)
    for compress in ("  compress weights int8\n", "  compress mlp sparse 2:4\n"):
        spec_c, diags = resolve_text(decode_plan("  mesh dp=1\n" + compress))
        assert not diags.has_errors, [d.message for d in diags.items]
        assert not cost_time.dense_mlp_of(lower(spec_c.plans[0])), compress
    fused = static_step_fused(False, True)
    assert static_step_fused(True, True) == fused - {"rope_q", "rope_k"}
    assert static_step_fused(False, False) == fused - {"silu_mul"}
    assert static_step_gate_up_silu(64, True) and not static_step_gate_up_silu(65, True)
    assert not static_step_gate_up_silu(8, False)
    assert static_step_extra_kernels(1, True) == static_step_extra_kernels(1, False) + 2
    ops = {o.name.removeprefix("decode_"): o for o in graph.classes[0].ops
           if o.name.startswith("decode_")}
    assert fused <= set(ops)
    rates = cost_time.rates_of(plan)
    e = rates.efficiency or cost_time.Efficiency()
    with_fusion = cost_time.step_estimate(graph, rates, phase="decode")
    monkeypatch.setattr(cost_time, "static_step_fused", lambda *a: frozenset())
    without = cost_time.step_estimate(graph, rates, phase="decode")
    calls = sum(ops[n].calls for n in fused) / cost_time.phase_steps(graph, "decode")
    assert without - with_fusion == pytest.approx(calls * e.graph_op_overhead_s, rel=1e-9)


def test_collectives_of_the_static_step_are_priced_at_the_in_graph_latency():
    """A tensor-parallel decode that runs the static step (one CUDA graph a step) prices each
    collective at graph_collective_latency_s, the prefill's eager step at collective_latency_s:
    each latency moves its phase's estimate by exactly its collectives' calls, and not the
    other phase's."""
    from dataclasses import replace

    from planc.cost import time as cost_time

    spec, _ = resolve_text(decode_plan("  mesh tp=2\n  shard heads, kv_heads, ffn over tp\n"))
    graph = lower(spec.plans[0])
    assert cost_time.static_decode(graph)
    rates = cost_time.rates_of(spec.plans[0])
    base = cost_time.Efficiency()
    steps = cost_time.phase_steps(graph, "decode")
    calls = {phase: sum(c.calls for c in graph.classes[0].collectives
                        if cost_time.in_phase(c.after, phase)) for phase in ("prefill", "decode")}
    assert calls["decode"] > 0 and calls["prefill"] > 0

    def est(phase: str, **kw: float) -> float:
        return cost_time.step_estimate(graph, rates, replace(base, **kw), phase=phase)

    graph_d = est("decode", graph_collective_latency_s=base.graph_collective_latency_s + 1e-6)
    assert graph_d - est("decode") == pytest.approx(calls["decode"] / steps * 1e-6, rel=1e-6)
    assert est("decode", collective_latency_s=1.0) == pytest.approx(est("decode"), rel=1e-12)
    eager_p = est("prefill", collective_latency_s=base.collective_latency_s + 1e-6)
    assert eager_p - est("prefill") == pytest.approx(calls["prefill"] * 1e-6, rel=1e-6)
    assert est("prefill", graph_collective_latency_s=1.0) == pytest.approx(est("prefill"))


def test_qkv_parts_rule():
    """q/k/v split in 4 at one row only (run 42); forced off, or on as o_proj splits."""
    assert static_step_qkv_parts(1) == 4 and static_step_qkv_parts(8) == 1
    assert static_step_qkv_parts(64) == 1 and static_step_qkv_parts(1, "0") == 1
    assert static_step_qkv_parts(8, "1") == 4 and static_step_qkv_parts(64, "1") == 2


def _one_gpu_decode_row(batch: int, autotune: str | None, model: str = VOCAB_MODEL
                        ) -> dict[str, int]:
    """A one-GPU decode plan's memory row, on an H100 with the given `autotune` (None: a
    device of the H100's figures that sets none, so 0)."""
    workload = DECODE.replace("batch    32", f"batch    {batch}").replace("2048", "64")
    device = ("device g from H100 {\n  autotune " + autotune + "\n}\n" if autotune else
              "device g {\n  memory 80 GB\n  cache 50 MB\n  compute 989 TFLOPS\n"
              "  bandwidth 3.35 TB/s\n  workspace 32 MiB\n}\n")
    cluster = device + "cluster c {\n  device g x 1\n  node 1\n}\n"
    spec, diags = resolve_text(plan_text("  mesh dp=1\n", model=model, cluster=cluster,
                                         workload=workload))
    assert not diags.has_errors, [d.message for d in diags.items]
    return lower(spec.plans[0]).classes[0].memory


@pytest.mark.parametrize("batch,model,workspaces_not_yet_made", [
    (1, VOCAB_MODEL, 2), (2, VOCAB_MODEL, 1),
    (1, QKV_BIAS, 1),  # a biased q/k/v (Qwen2) is cuBLAS's at one row too
])
def test_a_one_gpu_decode_peaks_in_front_of_the_attentions_autotuner(batch, model,
                                                                      workspaces_not_yet_made):
    """The decode row holds the static step's first warm-up in front of the attention's
    autotuner (memory.first_step_tuning_bytes): the device's `autotune` buffer and the step's
    few buffers there, less the stream workspaces not made yet (both at one row, where q/k/v
    is the Triton split; the capture stream's only, where cuBLAS's q/k/v runs first), its
    excess over the activations in the row's buffers. A short prompt keeps the prefill's
    activations below that moment."""
    flush = 2**30
    row = _one_gpu_decode_row(batch, "1 GiB", model)
    none = _one_gpu_decode_row(batch, None, model)
    assert row["activations"] == none["activations"] < 2**27  # the flush is not an activation
    # the buffers hold the moment's excess over the activations
    moment = none["activations"] + row["buffers"] - none["buffers"]
    step_buffers = moment - flush + workspaces_not_yet_made * CUBLAS_WORKSPACE
    assert 0 < step_buffers < 2**20 * batch
    # the moment moves byte for byte with the buffer, and so does the peak
    two = _one_gpu_decode_row(batch, "2 GiB", model)
    assert two["buffers"] == row["buffers"] + flush and two["peak"] == row["peak"] + flush


def test_product_parts_rule():
    """4 parts at few rows, 2 at 64 (o_proj only where the Triton kernel runs it: none above
    64 rows); none when a part's K would not be a multiple of SPLIT_ALIGN."""
    parts = static_step_product_parts
    assert parts("down_proj", 1, 14336) == 4 and parts("o_proj", 8, 4096) == 4
    assert parts("down_proj", 64, 14336) == 2 and parts("o_proj", 64, 4096) == 2
    assert parts("down_proj", 65, 14336) == 2 and parts("o_proj", 65, 4096) == 1
    assert parts("down_proj", 8, SPLIT_ALIGN * 3) == 1
    assert parts("down_proj", 64, SPLIT_ALIGN * 3) == 1


def _decode_graph(batch: int, body: str = "  mesh dp=1\n", model: str = VOCAB_MODEL):
    workload = DECODE.replace("batch    32", f"batch    {batch}")
    spec, diags = resolve_text(plan_text(body, model=model, workload=workload))
    assert not diags.has_errors, [d.message for d in diags.items]
    return spec.plans[0], lower(spec.plans[0])


@pytest.mark.parametrize("batch,body,model,expected", [
    (1, "  mesh dp=1\n", VOCAB_MODEL, {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    (8, "  mesh dp=1\n", VOCAB_MODEL, {"o_proj", "gate_up_proj", "down_proj"}),
    (64, "  mesh dp=1\n", VOCAB_MODEL, {"o_proj", "gate_up_proj", "down_proj"}),
    (65, "  mesh dp=1\n", VOCAB_MODEL, set()),  # gate/up's kernel and the split: <= 64 rows
    # tensor parallel: o_proj and down_proj are all-reduced, so cuBLAS's
    (1, "  mesh tp=2\n  shard heads, kv_heads, ffn over tp\n", VOCAB_MODEL,
     {"qkv_proj", "gate_up_proj"}),
    (1, "  mesh dp=1\n  compress weights int8\n", VOCAB_MODEL, set()),
    (1, "  mesh dp=1\n", VOCAB_MODEL.replace("  vocab", "  qk_norm  true\n  vocab"),
     {"o_proj", "gate_up_proj", "down_proj"}),  # RoPE outside the attention: q/k/v unsplit
    (1, "  mesh dp=1\n", QKV_BIAS, {"o_proj", "gate_up_proj", "down_proj"}),  # Qwen2's bias
])
def test_the_static_steps_triton_products(batch, body, model, expected):
    """The products the cost model prices as one Triton kernel are those the runtime runs so
    (decode_step.StaticStep's rules, read from layout/schedule)."""
    _, graph = _decode_graph(batch, body, model)
    assert cost_time.static_decode(graph)
    assert cost_time.static_step_triton_products(graph, batch) == expected


def test_triton_products_start_as_an_op_not_as_cublas(monkeypatch):
    """Each Triton product of the static step is priced with an op's start
    (graph_op_overhead_s), not cuBLAS's (graph_gemm_overhead_s): without the rule the estimate
    grows by exactly their calls times the difference."""
    plan, graph = _decode_graph(1)
    rates = cost_time.rates_of(plan)
    e = rates.efficiency or cost_time.Efficiency()
    triton = cost_time.static_step_triton_products(graph, 1)
    with_rule = cost_time.step_estimate(graph, rates, phase="decode")
    monkeypatch.setattr(cost_time, "static_step_triton_products", lambda *a: frozenset())
    without = cost_time.step_estimate(graph, rates, phase="decode")
    calls = sum(o.calls for o in graph.classes[0].ops
                if o.name.startswith("decode_") and o.name.removeprefix("decode_") in triton
                ) / cost_time.phase_steps(graph, "decode")
    assert len(triton) == 4 and calls > 0
    assert without - with_rule == pytest.approx(
        calls * (e.graph_gemm_overhead_s - e.graph_op_overhead_s), rel=1e-9)


@pytest.mark.parametrize("microbatches,stages,want", [
    (1, 2, [{0}, {1}]), (2, 2, [{0, 1}, {0, 1}]), (4, 2, [{0, 1}] * 4),
    (2, 4, [{0, 3}, {0, 1}, {1, 2}, {2, 3}]), (3, 3, [{0, 1, 2}] * 3)])
def test_a_steady_decode_step_runs_these_stages_each_round(microbatches, stages, want):
    """One microbatch per stage per round: a step takes max(microbatches, stages) rounds, and
    with fewer microbatches than stages only some stages run in each (the fill)."""
    from planc.layout.schedule import steady_step_rounds

    got = steady_step_rounds(microbatches, stages)
    assert len(got) == max(microbatches, stages)
    assert sorted(map(sorted, got)) == sorted(map(sorted, want))


@pytest.mark.parametrize("stages,microbatches", [(2, 1), (2, 2), (2, 4), (4, 2), (4, 4)])
def test_a_pipelined_decode_step_is_priced_as_the_rounds_run_it(stages, microbatches):
    """A decode step on a pipeline costs what the runtime's rounds take in the steady state
    (layout/schedule.stage_rounds, the schedule pipeline.generate walks): each round as long
    as the slowest stage that runs an item in it; the bound takes the larger of every
    microbatch on the slowest stage and one microbatch through every stage, and stays below
    the estimate."""
    from fractions import Fraction

    from planc.cost.time import (
        rates_of,
        stage_estimates,
        stage_parts,
        step_estimate,
        step_lower_bound,
    )
    from planc.layout.schedule import stage_rounds

    spec, diags = resolve_text(decode_plan(
        f"  mesh pp={stages}\n  shard layers over pp microbatches {microbatches}\n"))
    assert not diags.has_errors, [d.message for d in diags.items]
    plan = spec.plans[0]
    graph, rates = lower(plan), rates_of(plan)
    per_stage = stage_estimates(graph, rates, phase="decode")
    assert len(per_stage) == stages
    # the runtime's own rounds: a step of items well past the fill, by who runs in each round
    steps, t = stages + 4, stages + 1
    runs: dict[int, list[int]] = {}
    for k in range(stages):
        for r, rnd in enumerate(stage_rounds(microbatches, steps, stages, k)):
            if rnd.run is not None:
                runs.setdefault(r, []).append(k)
    first = [r for r, rnd in enumerate(stage_rounds(microbatches, steps, stages, 0))
             if rnd.run is not None]
    step_rounds = range(first[t * microbatches], first[(t + 1) * microbatches])
    want = sum(max(per_stage[k] for k in runs[r]) for r in step_rounds if r in runs)
    assert step_estimate(graph, rates, phase="decode") == pytest.approx(want, rel=1e-12)
    # the prompt's prefill stays GPipe's
    prefill = stage_estimates(graph, rates)
    assert step_estimate(graph, rates) == pytest.approx(
        sum(prefill) + (microbatches - 1) * max(prefill), rel=1e-12)
    parts = [max(p) for p in stage_parts(graph, rates, "decode")]
    bound = step_lower_bound(graph, rates, "decode")
    assert bound == max(sum(parts, Fraction(0)), microbatches * max(parts))
    assert float(bound) <= step_estimate(graph, rates, phase="decode")


def test_the_last_stage_sends_each_steps_tokens_back_to_the_first():
    """A decode step on a pipeline ends on the last stage with its microbatch's tokens sent to
    the first (runtime/pipeline.generate's exchange): a step record of the last stage, int64
    per row, once per microbatch and step, priced like the hidden state's send; one stage
    sends nothing."""
    from planc.compiler.splits import local_dims

    spec, diags = resolve_text(decode_plan("  mesh pp=2\n  shard layers over pp microbatches 2\n"))
    assert not diags.has_errors, [d.message for d in diags.items]
    plan = spec.plans[0]
    graph, rates = lower(plan), cost_time.rates_of(plan)
    step = [[(c.op, c.after, c.bytes) for c in cls.collectives if c.after.startswith("decode:")]
            for cls in graph.classes]
    d = local_dims(plan, "step")
    assert ("send_recv", "decode:lm_head", d.mb * 8) in step[-1]
    assert not any(after == "decode:lm_head" for _, after, _ in step[0])
    assert any(after == "decode:stage_output" for _, after, _ in step[0])
    # it costs the last stage one more exchange a step
    without = graph.model_copy(update={"classes": [
        graph.classes[0], graph.classes[-1].model_copy(update={"collectives": [
            c for c in graph.classes[-1].collectives if c.after != "decode:lm_head"]})]})
    got = cost_time.stage_estimates(graph, rates, phase="decode")
    base = cost_time.stage_estimates(without, rates, phase="decode")
    assert got[0] == base[0] and got[-1] > base[-1]
    one, _ = resolve_text(decode_plan("  mesh dp=1\n"))
    assert not any(c.after == "decode:lm_head" for cls in lower(one.plans[0]).classes
                   for c in cls.collectives)


def test_decode_rounds_hold_no_send_in_flight_and_no_receive_posted_ahead():
    """In the decode rounds (a decode's prompt too) a stage waits for its send before the next
    round's item and posts its receive after computing (runtime/pipeline.generate); a
    prefill's pipeline holds both beside its layers."""
    from planc.compiler.splits import local_dims
    from planc.cost.memory import StageShape, send_recv_terms

    spec, _ = resolve_text(decode_plan("  mesh pp=2\n  shard layers over pp microbatches 2\n"))
    d = local_dims(spec.plans[0])
    for first, last in ((True, False), (False, True), (False, False)):
        assert send_recv_terms(StageShape(first, last, 2, rounds=True), d) == []
    names = {b.name for b in send_recv_terms(StageShape(False, False, 2, rounds=False), d)}
    assert names == {"recv_next", "send_in_flight"}


def test_a_static_steps_moe_block_is_priced_with_its_own_collectives():
    """Expert parallel decode whose step runs at static addresses (whole heads per rank): the
    step's MoE block gathers the ep group's rows and dense gates and all-reduces its float32
    partials (runtime/moe.moe_static), so those are its collectives, sized as moe_static's
    buffers are, and the routed block's all_to_all copies are not; a step that stays eager
    (a head x head_dim core) keeps the routed copies. The static step's MoE buffers are the
    gathered rows'."""
    from pathlib import Path

    from planc.compiler.decode import step_program
    from planc.compiler.splits import local_dims, static_decode_step

    text = (Path(__file__).resolve().parents[2] / "specs" / "local" / "decode_ep4.plan"
            ).read_text()
    eager_text = text.replace("mesh     ep=4", "mesh     ep=2, hd=2").replace(
        "  shard    experts, batch over ep\n",
        "  shard    experts, batch over ep\n  shard    head_dim over hd\n")
    assert eager_text != text
    steps = {}
    for name, body in (("static", text), ("eager", eager_text)):
        spec, diags = resolve_text(body)
        assert not diags.has_errors, [d.message for d in diags.items]
        plan = spec.plans[0]
        assert static_decode_step(plan) == (name == "static")
        graph = lower(plan)
        steps[name] = [(c.op, c.after, c.bytes) for c in graph.classes[0].collectives
                       if c.after.startswith("decode:")]
        if name == "static":
            d = local_dims(plan, "step")
            ep = plan.degree("experts")
            assert d.static_moe_rows == d.tokens * ep == 4
            h, e = plan.model.hidden, plan.model.dtype_bytes
            assert sorted(steps[name]) == sorted([
                ("all_gather", "decode:router", d.tokens * h * e),
                ("all_gather", "decode:router", d.tokens * plan.model.experts * 4),
                ("all_reduce", "decode:weighted_sum", d.static_moe_rows * h * 4)])
            assert local_dims(plan).static_moe_rows == 0  # the prefill stays routed
            # plain weights, stacked: seven kernels for all local experts (moe._batched_experts)
            assert d.static_moe_batched
            _, ops, bufs = step_program(plan)
            assert [o.name for o in ops if o.name.startswith("expert")] == [
                "experts_gate_up_proj", "experts_silu", "experts_mul", "experts_down_proj",
                "experts_f32", "experts_weight", "experts_sum"]
            sizes = {b.name: b.bytes for b in bufs}
            n, G, f = d.experts, d.static_moe_rows, d.ffn
            assert sizes["gathered_rows"] == G * h * e
            assert sizes["out_f32"] == G * h * 4
            assert sizes["experts_gate_up"] == n * G * 2 * f * e
            assert sizes["experts_out_f32"] == n * G * h * 4
            # moe_static holds the gathered rows until the sum over experts has its output
            i_sum = next(i for i, o in enumerate(ops) if o.name == "experts_sum")
            assert {"gathered_rows", "gathered_gates", "out_f32"} <= {
                b.name for b in bufs if b.first <= i_sum <= b.last}
            assert "dispatch_send" not in sizes
            # int8 experts are modules of their own: eight kernels per local expert
            i8, diags = resolve_text(body.replace("  shard    experts, batch over ep\n",
                                                  "  shard    experts, batch over ep\n"
                                                  "  compress weights int8\n"))
            assert not diags.has_errors, [x.message for x in diags.items]
            assert not local_dims(i8.plans[0], "step").static_moe_batched
            _, ops, bufs = step_program(i8.plans[0])
            assert sum(o.name.startswith("expert_") for o in ops) == 8 * d.experts
            sizes = {b.name: b.bytes for b in bufs}
            assert sizes["out_f32"] == sizes["expert_out_f32"] == G * h * 4
    assert not any(op == "all_to_all" for op, _, _ in steps["static"])
    assert {("all_to_all", "decode:router"), ("all_to_all", "decode:experts")} <= {
        (op, after) for op, after, _ in steps["eager"]}
    assert not any(op == "all_gather" for op, _, _ in steps["eager"])
