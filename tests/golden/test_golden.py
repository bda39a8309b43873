"""Golden files per stage: tests/golden/<case>.plan -> .errors.txt / .verify.txt / .ir.json /
.py. Regenerate with `pytest tests/test_golden.py --update-goldens` and review the diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planc.backends.torch.runconfig import to_run_config
from planc.compiler.lower import lower
from planc.diagnostics import Diagnostics
from planc.pipeline import check_paths, load
from planc.verifier.text import to_text

GOLDEN = Path(__file__).parent
CASES = sorted(p.stem for p in GOLDEN.glob("*.plan"))


def _compare(path: Path, text: str, update: bool) -> None:
    if update:
        path.write_text(text)
        return
    assert path.exists(), f"{path.name} missing: run with --update-goldens"
    assert text == path.read_text(), f"{path.name} differs: rerun with --update-goldens and review"


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, update_goldens: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GOLDEN)  # paths in messages are relative, as a user would type them
    src = f"{case}.plan"
    result = check_paths([src])
    report = to_text(result)
    kind = "errors" if result.diagnostics and not result.plans else "verify"
    _compare(GOLDEN / f"{case}.{kind}.txt", report, update_goldens)
    if kind == "errors":
        return
    diags = Diagnostics()
    spec, _ = load(src, diags)
    assert spec is not None
    graphs = {p.name: lower(p) for p in spec.plans}
    _compare(GOLDEN / f"{case}.ir.json",
             json.dumps({k: g.model_dump(mode="json") for k, g in graphs.items()}, indent=1,
                        sort_keys=True) + "\n", update_goldens)
    if all(p.status == "proved" for p in result.plans):
        from planc.backends.torch.emit import emit_program

        programs = [emit_program(to_run_config(p, graphs[p.name]), plan_name=p.name,
                                 source_file=src) for p in spec.plans]
        _compare(GOLDEN / f"{case}.py", "\n".join(programs), update_goldens)
