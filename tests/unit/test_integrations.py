"""Integration files: the pre-commit hooks run real `planc` commands, the TextMate grammar knows
the whole language (every key, dimension, unit and preset planc accepts) and scopes a real spec
as expected, and the CI workflow in the docs uses formats planc has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from planc.cli import _parser
from planc.compiler import presets, units
from planc.compiler.resolve import KEYS_BY_KIND, METRICS
from planc.compiler.spec import DIMS

ROOT = Path(__file__).resolve().parents[2]
GRAMMAR = json.loads((ROOT / "editors" / "textmate" / "plan.tmLanguage.json").read_text())


def test_pre_commit_hooks_run_planc_commands_on_plan_files():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    ids = [h["id"] for h in hooks]
    assert len(ids) == len(set(ids)) and {"planc-fmt", "planc-check"} <= set(ids)
    for h in hooks:
        assert h["language"] == "python" and re.search(h["files"], "specs/x.plan")
        assert not re.search(h["files"], "x.py")
        prog, *args = h["entry"].split()
        assert prog == "planc"
        parsed = _parser().parse_args([*args, "a.plan", "b.plan"])  # pre-commit appends files
        assert parsed.paths == ["a.plan", "b.plan"]


def _patterns(node: dict) -> list[dict]:
    out = []
    for p in node.get("patterns", []):
        if "include" in p:
            p = GRAMMAR["repository"][p["include"][1:]]
        if "patterns" in p:
            out += _patterns(p)
        else:
            out.append(p)
    return out


PATTERNS = _patterns(GRAMMAR)


def scopes(line: str) -> list[tuple[str, str]]:
    """(text, scope) pairs a TextMate engine would give a line (earliest match, then order)."""
    out, pos = [], 0
    compiled = [(re.compile(p["match"]), p) for p in PATTERNS]
    while pos < len(line):
        best = None
        for rx, p in compiled:
            m = rx.search(line, pos)
            if m and m.end() > m.start() and (best is None or m.start() < best[0].start()):
                best = (m, p)
        if best is None:
            break
        m, p = best
        if "name" in p:
            out.append((m.group(0), p["name"]))
        for k, cap in p.get("captures", {}).items():
            if m.group(int(k)):
                out.append((m.group(int(k)), cap["name"]))
        pos = m.end()
    return out


def test_every_grammar_pattern_compiles():
    assert GRAMMAR["scopeName"] == "source.plan" and "plan" in GRAMMAR["fileTypes"]
    assert PATTERNS and all(re.compile(p["match"]) for p in PATTERNS)


def test_the_grammar_scopes_a_real_plan():
    got = scopes("plan baseline {  # the seeds' baseline")
    assert ("plan", "storage.type.block.plan") in got
    assert ("baseline", "entity.name.type.plan") in got
    assert ("# the seeds' baseline", "comment.line.number-sign.plan") in got
    got = scopes("  require  throughput >= 12800 tokens/s")
    assert ("require", "keyword.control.statement.plan") in got
    assert (">=", "keyword.operator.comparison.plan") in got
    assert ("12800", "constant.numeric.plan") in got
    assert ("tokens/s", "keyword.other.unit.plan") in got
    got = scopes("  mesh     pp=?, tp=8")
    assert ("?", "constant.language.hole.plan") in got and ("8", "constant.numeric.plan") in got
    got = scopes("  compress mlp sparse 2:4")
    assert ("2:4", "constant.numeric.ratio.plan") in got
    got = scopes("  memory   90%")
    assert ("memory", "variable.other.key.plan") in got and ("%", "keyword.other.unit.plan") in got


@pytest.mark.parametrize("unit", sorted(units.UNITS))
def test_the_grammar_knows_every_unit(unit):
    got = scopes(f"  memory 12 {unit}")
    assert ("12", "constant.numeric.plan") in got and (unit, "keyword.other.unit.plan") in got


def test_the_grammar_knows_every_key_dimension_and_preset():
    keys = {k for table in KEYS_BY_KIND.values() for k in table}
    for k in keys:
        assert (k, "variable.other.key.plan") in scopes(f"  {k} 1"), k
    for d in DIMS:
        assert (d, "support.constant.dimension.plan") in scopes(f"  shard x, {d} over tp"), d
    for p in presets.PRESETS:
        assert (p, "support.constant.name.plan") in scopes(f"  device {p} x 8"), p
    for m in METRICS:  # metrics are plain names after `require`: never mistaken for numbers
        assert all(s != "constant.numeric.plan" for _, s in scopes(f"  require {m} <= 1")[:2])


def test_the_ci_workflow_in_the_docs_uses_real_formats():
    text = (ROOT / "docs" / "ci.md").read_text()
    workflow = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert workflow
    doc = yaml.safe_load(workflow.group(1))
    runs = [s.get("run", "") for job in doc["jobs"].values() for s in job["steps"]]
    checks = [r for r in runs if "planc check" in r]
    assert any("--format github" in r for r in checks)
    assert any("--format sarif" in r for r in checks)
    uploads = [s for job in doc["jobs"].values() for s in job["steps"]
               if "upload-sarif" in s.get("uses", "")]
    assert uploads and uploads[0]["if"].startswith("always()")


def test_the_grammar_scopes_a_checkpoint_source():
    got = scopes('model llama3 from hf "ckpt/llama3_70b" {')
    assert ("hf", "entity.name.type.base.plan") in got
    assert ('"ckpt/llama3_70b"', "string.quoted.double.plan") in got
