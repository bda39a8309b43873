"""Holes: synthesis finds values that satisfy every obligation, explains infeasible plans, and
reports headroom; each checked against brute force over the candidate values."""

from __future__ import annotations

from dataclasses import replace

from planc.compiler.lower import lower
from planc.diagnostics import Diagnostics
from planc.pipeline import check_paths, check_plan
from planc.verifier.headroom import headroom
from tests.helpers import WORKLOAD, line_of, plan_text, resolve_text


def synth(tmp_path, text: str):  # type: ignore[no-untyped-def]
    f = tmp_path / "h.plan"
    f.write_text(text)
    return check_paths([f]), f


def test_mesh_and_microbatch_holes_are_filled_and_the_completion_verifies(tmp_path):
    text = plan_text("  mesh pp=?, tp=?\n  shard layers over pp microbatches ?\n"
                     "  shard heads, kv_heads, ffn over tp\n  require memory <= 50%\n")
    result, f = synth(tmp_path, text)
    [p] = result.plans
    assert p.status == "proved" and p.completed
    values = p.extra["synthesis"]["values"]
    pp, tp, mb = values["mesh.pp"], values["mesh.tp"], values["microbatches"]
    assert pp * tp <= 16 and 32 % tp == 0 and 8 % tp == 0 and 16 % pp == 0 and 128 % mb == 0
    # the completed text, pasted back over the plan, checks as proved with no holes
    start = text.index("plan p {")
    f.write_text(text[:start] + p.completed)
    again = check_paths([f])
    assert again.exit_code == 0 and "?" not in p.completed


def test_minimize_devices_picks_the_fewest_that_fit(tmp_path):
    text = plan_text("  mesh tp=?\n  shard heads, kv_heads, ffn over tp\n  minimize devices\n")
    [p] = synth(tmp_path, text)[0].plans
    tp = p.extra["synthesis"]["values"]["mesh.tp"]
    assert tp == 1  # a 4B-parameter model at batch 128 x 2048 fits one H100? check by lowering
    spec, _ = resolve_text(text.replace("tp=?", "tp=1"))
    g = lower(spec.plans[0])
    assert g.classes[0].memory["peak"] <= g.classes[0].memory["capacity"]


def test_maximize_batch_finds_the_largest_that_fits(tmp_path):
    text = plan_text("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n  maximize batch\n"
                     ).replace("batch 128", "batch ?")
    [p] = synth(tmp_path, text)[0].plans
    b = p.extra["synthesis"]["values"]["batch"]
    spec, _ = resolve_text(text.replace("batch ?", f"batch {b}"))
    fits = lower(spec.plans[0]).classes[0].memory
    spec2, _ = resolve_text(text.replace("batch ?", f"batch {b + 1}"))
    over = lower(spec2.plans[0]).classes[0].memory
    assert fits["peak"] <= fits["capacity"] < over["peak"]


def test_conflicting_constraints_give_an_unsat_core_with_the_lines(tmp_path):
    text = plan_text("  mesh pp=3, tp=?\n  shard layers over pp\n  shard heads, kv_heads, ffn over tp\n")
    result, _ = synth(tmp_path, text)
    [d] = [d for d in result.diagnostics if d.code == "E092"]
    assert "layers (16) divisible" in d.message
    lines = {d.span.line} | {r.span.line for r in d.related}
    assert line_of(text, "shard layers") in lines


def test_an_infeasible_plan_gets_the_nearest_feasible_device_count(tmp_path):
    big = WORKLOAD.replace("seq   2048", "seq   262144")
    text = plan_text("  mesh sp=?\n  shard seq over sp attention ring\n", workload=big)
    result, _ = synth(tmp_path, text)
    [d] = [d for d in result.diagnostics if d.code == "E093"]
    assert "needs at least" in d.hint
    n = int(d.hint.split("needs at least ")[1].split()[0])
    # brute force: n devices admit a sequence split that fits; no count from 16 up to n-1 does
    def fits(s: int, k: int) -> bool:  # sp=s on k devices: every class within its capacity
        plan = resolve_text(text.replace("sp=?", f"sp={s}"))[0].plans[0]
        g = lower(replace(plan, cluster=replace(plan.cluster, count=k)))
        return all(c.memory["peak"] <= c.memory["capacity"] for c in g.classes)

    def ok(k: int) -> bool:
        return any(262144 % (2 * s) == 0 and fits(s, k)
                   for s in range(1, k + 1) if k % s == 0 or s <= k)

    assert ok(n) and not ok(n - 1)


def test_headroom_is_the_largest_batch_that_fits_per_class():
    text = plan_text("  mesh pp=2, tp=8\n  shard layers over pp microbatches 8\n"
                     "  shard heads, kv_heads, ffn over tp\n")
    spec, _ = resolve_text(text)
    plan = spec.plans[0]
    h = headroom(plan)
    step = 8  # microbatches x dp

    def peak(cid: str, batch: int) -> tuple[int, int]:
        g = lower(replace(plan, workload=replace(plan.workload, batch=batch)))
        c = g.class_by_id(cid)
        return c.memory["peak"], c.memory["capacity"]

    for cid, b in h["batch"].items():
        p, cap = peak(cid, b)
        assert p <= cap
        p2, _ = peak(cid, b + step)
        assert p2 > cap
    result = check_plan(plan, Diagnostics())
    assert "largest batch that fits" in result.extra["headroom_text"]


def test_minimize_time_uses_every_device_and_the_best_microbatch_count(tmp_path):
    """Brute force over every (pp, tp, microbatches) the structure allows: synthesis must pick
    the one with the smallest estimated time (the objective it promises)."""
    from planc.cost.time import rates_of, step_estimate

    text = plan_text("  mesh pp=?, tp=?\n  shard layers over pp microbatches ?\n"
                     "  shard heads, kv_heads, ffn over tp\n  minimize time\n")
    [p] = synth(tmp_path, text)[0].plans
    chosen = p.extra["synthesis"]["values"]
    best = None
    for pp in (1, 2, 4, 8, 16):
        for tp in (1, 2, 4, 8):
            if pp * tp > 16:
                continue
            for mb in (1, 2, 4, 8, 16, 32, 64, 128):
                body = (f"  mesh pp={pp}, tp={tp}\n  shard layers over pp microbatches {mb}\n"
                        "  shard heads, kv_heads, ffn over tp\n")
                spec, _ = resolve_text(plan_text(body))
                g = lower(spec.plans[0])
                if any(c.memory["peak"] > c.memory["capacity"] for c in g.classes):
                    continue
                t = step_estimate(g, rates_of(spec.plans[0]))
                if best is None or t < best[0]:
                    best = (t, pp, tp, mb)
    assert (chosen["mesh.pp"], chosen["mesh.tp"], chosen["microbatches"]) == best[1:]
