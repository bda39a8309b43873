"""A file of many plans: plans equal but for their names share the solver work, and each keeps
its own verdicts' locations (its speed: benchmarks/verifier_scale.py)."""

from __future__ import annotations

from planc.grammar.parse import MAX_SOURCE_BYTES
from planc.pipeline import check_paths
from tests.helpers import plan_text
from tests.many_plans import many_plans


def test_a_256_kib_file_of_1846_plans_checks_every_plan(tmp_path):
    """Its speed (5 CPU seconds at most; 78 s before plans equal but for their names shared the
    solver's work) is benchmarks/verifier_scale.py's to measure, not a clock in a test."""
    text = many_plans(1846)
    assert len(text.encode()) <= MAX_SOURCE_BYTES
    f = tmp_path / "many.plan"
    f.write_text(text)
    result = check_paths([f])
    assert len(result.plans) == 1846
    assert len({p.name for p in result.plans}) == 1846


def test_plans_equal_but_for_their_names_get_their_own_lines_and_names(tmp_path):
    one = "  mesh tp=16\n  shard heads, kv_heads, ffn over tp\n  require memory <= 1%\n"
    text = plan_text(one) + "plan q {\n  model m\n  cluster c\n  workload w\n" + one + "}\n"
    f = tmp_path / "two.plan"
    f.write_text(text)
    result = check_paths([f])
    p, q = result.plans
    assert (p.name, q.name, q.graph.plan) == ("p", "q", "q")
    lines = text.splitlines()
    for r in (p, q):
        bad = [v for v in r.verdicts if v.status == "violated"]
        assert bad, r.name
        for v in bad:
            assert v.obligation.span is not None
            # the line the verdict points at is inside this plan's own block
            start = lines.index(f"plan {r.name} {{") + 1
            assert start < v.obligation.span.line <= start + 8, (r.name, v.obligation.span)
    assert [v.status for v in p.verdicts] == [v.status for v in q.verdicts]


def test_equal_plans_that_write_different_lines_point_at_their_own(tmp_path):
    """p writes `microbatches 1`, q leaves it to the default: equal plans, but p's
    microbatch verdict points at the option and q's at its shard line."""
    body = "  mesh pp=2, tp=8\n  shard layers over pp{}\n  shard heads, kv_heads, ffn over tp\n"
    text = plan_text(body.format(" microbatches 1")) + \
        "plan q {\n  model m\n  cluster c\n  workload w\n" + body.format("") + "}\n"
    (tmp_path / "x.plan").write_text(text)
    p, q = check_paths([tmp_path / "x.plan"]).plans
    lines = text.splitlines()
    for r in (p, q):
        start = lines.index(f"plan {r.name} {{") + 1
        for v in r.verdicts:
            for span in (v.obligation.span, *(x.span for x in v.obligation.related)):
                if span is not None and span.line > lines.index("plan p {"):
                    assert start < span.line <= start + 8, (r.name, v.obligation.name, span)
