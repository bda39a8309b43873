"""Small builders for tests: a plan text from parts, and checking it in one call."""

from __future__ import annotations

from planc.compiler.resolve import resolve
from planc.diagnostics import Diagnostics
from planc.grammar.parse import parse_text
from planc.pipeline import check_plan

MODEL = """
model m {
  arch     llama
  layers   16
  hidden   4096
  heads    32
  kv_heads 8
  head_dim 128
  ffn      16384
  dtype    bf16
}
"""
CLUSTER = """
cluster c {
  device H100 x 16
  node 8
}
"""
WORKLOAD = """
workload w {
  batch 128
  seq   2048
}
"""


def plan_text(body: str, model: str = MODEL, cluster: str = CLUSTER, workload: str = WORKLOAD
              ) -> str:
    return (model + cluster + workload
            + "plan p {\n  model m\n  cluster c\n  workload w\n" + body + "\n}\n")


def resolve_text(text: str, path: str = "t.plan"):  # type: ignore[no-untyped-def]
    diags = Diagnostics()
    spec = resolve(parse_text(text, path), diags)
    return spec, diags


def check_text(text: str):  # type: ignore[no-untyped-def]
    spec, diags = resolve_text(text)
    assert not diags.has_errors, [d.message for d in diags]
    result = check_plan(spec.plans[0], diags)
    return result, diags


def line_of(text: str, needle: str) -> int:
    """1-based line number of the first line containing needle."""
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


def verdict(result, code: str, name_part: str = ""):  # type: ignore[no-untyped-def]
    matches = [v for v in result.verdicts
               if v.obligation.code == code and name_part in v.obligation.name]
    assert matches, f"no obligation {code} {name_part!r}: " + ", ".join(
        f"{v.obligation.code} {v.obligation.name}" for v in result.verdicts)
    return matches[0]
