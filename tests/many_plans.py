"""A large .plan file for the speed test: every block of specs/seeds and specs/local once (renamed
to short unique names), then one-line plans cycling through their plans up to a count."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from planc.fmt import statement
from planc.grammar import ast
from planc.grammar.parse import parse_text

SPECS = Path(__file__).resolve().parents[1] / "specs"
REFS = ("model", "cluster", "workload")


def _line(b: ast.Block, name: str) -> str:
    # compact, to fit 1,846 plans under the 256 KiB file limit as the report's file did
    body = ";".join(re.sub(r" ?(,|<=|>=|==) ", r"\1", " ".join(statement(s))) for s in b.body)
    return f"{b.kind} {name}{{{body}}}"


def _renamed(s: ast.Statement, names: dict[tuple[str, str], str]) -> ast.Statement:
    if isinstance(s, ast.Prop) and s.key.name in REFS and isinstance(s.value, ast.NameValue):
        name = replace(s.value.name, name=names[s.key.name, s.value.name.name])
        return replace(s, value=replace(s.value, name=name))
    if isinstance(s, ast.Prop) and isinstance(s.value, ast.CountValue) \
            and ("device", s.value.name.name) in names:  # a declared device, not a preset
        name = replace(s.value.name, name=names["device", s.value.name.name])
        return replace(s, value=replace(s.value, name=name))
    return s


def many_plans(count: int) -> str:
    defs: list[str] = []
    plans: list[ast.Block] = []
    for path in sorted((SPECS / "seeds").glob("*.plan")) + sorted((SPECS / "local").glob("*.plan")):
        blocks = parse_text(path.read_text(), str(path)).blocks
        names = {(b.kind, b.name.name): f"{b.kind[0]}{len(defs) + i}"
                 for i, b in enumerate(blocks) if b.kind != "plan"}
        for b in blocks:
            b = replace(b, body=tuple(_renamed(s, names) for s in b.body))
            if b.kind == "plan":
                plans.append(b)
            else:
                defs.append(_line(b, names[b.kind, b.name.name]))
    # every plan once as written; the repeats without their claims, so that 1,846 plans still
    # fit the 256 KiB file limit now that the seed plans write all of their documents' claims
    bare = [replace(b, body=tuple(s for s in b.body if not isinstance(s, ast.Require)))
            for b in plans]
    lines = [_line((plans if k < len(plans) else bare)[k % len(plans)], f"p{k}")
             for k in range(count)]
    return "\n".join(defs + lines) + "\n"
