"""The rules a runtime placement needs are the compiler's, stated once: a plan that breaks one
gets its diagnostic from `planc check` (the runtime no longer re-validates its configuration
with a copy of these rules; these cases were its tests)."""

from __future__ import annotations

import pytest

from planc.pipeline import check_plan
from tests.helpers import MODEL, plan_text, resolve_text


def _codes(body: str, model: str = MODEL) -> list[str]:
    spec, diags = resolve_text(plan_text(body, model=model))
    codes = [d.code for d in diags if d.severity == "error"]
    if not diags.has_errors:
        result = check_plan(spec.plans[0], diags)
        assert result is not None
        codes += [v.obligation.code for v in result.verdicts if v.status == "violated"]
    return codes


@pytest.mark.parametrize("body,model_edit,code", [
    ("  mesh tp=3\n  shard heads, kv_heads over tp\n", None, "V201"),  # heads % parts
    ("  mesh tp=2\n  shard heads, kv_heads over tq\n", None, "E033"),  # axis not in the mesh
    ("  mesh pp=2\n  shard layers over pp stages [0..0], [2..15]\n", None, "V301"),  # a gap
    ("  mesh pp=2\n  shard layers over pp stages [0..15]\n", None, "V301"),  # 1 range, 2 stages
    ("  mesh dp=2, pp=2\n  shard batch over dp\n  shard layers over pp microbatches 3\n", None,
     "V209"),  # 64 local rows in 3 microbatches
    ("  mesh tp=8\n  shard heads, kv_heads over tp\n", ("kv_heads 8", "kv_heads 3"), "E018"),
    ("  mesh n=2, m=128\n  shard heads, kv_heads over n\n  shard head_dim over m\n", None,
     "V310"),  # head_dim 128 over 128: RoPE pairs (i, i + 64) would be cut
    ("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n  compress mlp sparse 2:4\n",
     ("16384", "16392"), "V211"),  # local ffn 2049 is no multiple of 8
])
def test_a_placement_the_runtime_cannot_run_is_refused_by_check(body, model_edit, code):
    model = MODEL.replace(*model_edit) if model_edit else MODEL
    assert code in _codes(body, model)


def test_a_plain_tensor_parallel_plan_breaks_no_rule():
    assert _codes("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n") == []


@pytest.mark.parametrize("lines,code", [
    ("  rope_type yarn\n", "E025"),  # a rope scaling the runtime does not implement
    ("  rope_type llama3\n  rope_factor 8\n", "E078"),  # llama3 without its frequency bounds
])
def test_a_rope_scaling_the_runtime_cannot_compute_is_refused_by_check(lines, code):
    model = MODEL.replace("  dtype    bf16\n", "  dtype    bf16\n" + lines)
    assert code in _codes("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n", model)
