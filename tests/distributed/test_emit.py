"""emit_program writes valid, deterministic Python in which no user string becomes code."""

from __future__ import annotations

import ast
import dataclasses

import pytest

from planc.backends.torch.emit import emit_program
from planc.backends.torch.runtime.config import RunConfig

HOSTILE = "x'\n__import__('os').system('echo pwned') #\r\u2028"


def top_level_shape(src: str) -> list[str]:
    return [type(node).__name__ for node in ast.parse(src).body]


def assigned_literal(src: str, name: str):
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == name:  # type: ignore[attr-defined]
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not assigned")


def test_emitted_program_parses_and_is_byte_identical_for_the_same_config(tiny, tp):
    cfg = tiny((("pp", 2), ("tp", 2)), {"layers": ("pp",), **tp("tp")}, stages=((0, 2), (2, 4)))
    again = RunConfig.from_dict(cfg.to_dict())
    a = emit_program(cfg, plan_name="baseline", source_file="specs/baseline.plan")
    b = emit_program(again, plan_name="baseline", source_file="specs/baseline.plan")
    assert a == b
    ast.parse(a)
    assert RunConfig.from_dict(assigned_literal(a, "CONFIG")) == cfg
    changed = dataclasses.replace(cfg, microbatches=2)
    assert emit_program(changed, plan_name="baseline", source_file="specs/baseline.plan") != a


def test_user_strings_stay_literals_in_code_and_comments(tiny):
    cfg = tiny(((HOSTILE, 2),), {"heads": (HOSTILE,), "ffn": (HOSTILE,)})
    src = emit_program(cfg, plan_name=HOSTILE, source_file=HOSTILE)
    # Exactly the statements of the template: imports, two literals, main, the __main__ guard.
    assert top_level_shape(src) == [
        "ImportFrom", "Import", "ImportFrom", "ImportFrom", "ImportFrom", "ImportFrom",
        "Assign", "Assign", "FunctionDef", "If",
    ]  # fmt: skip
    calls = [n.func for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)]
    assert not [f for f in calls if isinstance(f, ast.Name) and f.id == "__import__"]
    assert assigned_literal(src, "PLAN") == HOSTILE
    assert RunConfig.from_dict(assigned_literal(src, "CONFIG")) == cfg


def test_emit_refuses_non_finite_numbers(tiny):
    cfg = tiny((("tp", 1),), {})
    features = dataclasses.replace(cfg.model.features, rope_theta=float("inf"))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, features=features))
    with pytest.raises(ValueError, match="rope_theta"):
        emit_program(cfg, plan_name="p", source_file="p.plan")
