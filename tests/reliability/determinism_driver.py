"""Run `planc check --format json`, `planc compile` and `planc emit` on every spec in one
process and print every exit code and output as one JSON document (for test_determinism, which
runs this under several PYTHONHASHSEED values and compares the bytes)."""

from __future__ import annotations

import json
import sys

from planc.grammar.parse import parse_file
from tests.reliability.common import SPECS, planc


def outputs() -> dict[str, list[object]]:
    got: dict[str, list[object]] = {}
    for spec in SPECS:
        path = spec.relative_to(spec.parents[2]).as_posix()  # specs/local/x.plan
        r = planc("check", path, "--format", "json")
        got[f"check {path}"] = [r.code, r.out, r.err]
        tree, _ = parse_file(path)
        for block in tree.blocks:
            if block.kind != "plan":
                continue
            for command in ("compile", "emit"):
                r = planc(command, path, "--plan", block.name.name)
                got[f"{command} {path} {block.name.name}"] = [r.code, r.out, r.err]
    return got


if __name__ == "__main__":
    json.dump(outputs(), sys.stdout, sort_keys=True)
