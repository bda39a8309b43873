"""Counts read as English: "1 plan", "1 input error", "1 more device class", "1 rank"."""

from __future__ import annotations

from planc.backends.torch.emit import emit_program
from planc.backends.torch.runconfig import to_run_config
from planc.compiler.lower import lower
from planc.verifier.report import CheckResult
from planc.verifier.text import to_text
from tests.helpers import check_text, plan_text, resolve_text


def test_a_report_of_one_plan_one_error_and_two_violating_classes_uses_singulars():
    # two fit-cache stages over L2 alike: one reported, the other as "1 more device class"
    result, _ = check_text(plan_text(
        "  mesh stage=2\n  shard layers over stage fit cache microbatches 128\n"))
    _, bad = resolve_text("model broken { layers 1 }\n")
    report = CheckResult([result], [d for d in bad if d.severity == "error"][:1], {})
    text = to_text(report)
    assert "(the same for 1 more device class:" in text
    assert text.rstrip().endswith("1 plan: 0 proved, 1 violated, 0 unknown; 1 input error")


def test_a_one_rank_program_says_1_rank():
    spec, _ = resolve_text(plan_text("  mesh tp=1\n"))
    plan = spec.plans[0]
    source = emit_program(to_run_config(plan, lower(plan)), plan_name="p", source_file="p.plan")
    assert ": 1 rank, rank = row-major" in source
