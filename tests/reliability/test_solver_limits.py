"""A solver that runs out of budget says UNKNOWN, never proved: `planc check --rlimit 1` exits 3
with the same verdict (and the same bytes) every time, as a real process, in text and JSON,
and `-o` gets a whole report. (tests/unit/test_verifier.py checks the same through the API.)"""

from __future__ import annotations

import json

from tests.reliability.common import ROOT, no_traceback, planc_process

SPEC = "specs/local/tp2_pp2.plan"


def test_a_tiny_rlimit_is_unknown_exit_3_and_the_same_twice(tmp_path):
    runs = [planc_process("check", SPEC, "--rlimit", "1") for _ in range(2)]
    for r in runs:
        no_traceback(r)
        assert r.code == 3, r.text
    assert runs[0].out == runs[1].out
    assert "UNKNOWN" in runs[0].out and "PROVED" not in runs[0].out
    assert "1 unknown" in runs[0].out

    out = tmp_path / "report.json"
    docs = []
    for _ in range(2):
        r = planc_process("check", SPEC, "--rlimit", "1", "--format", "json", "-o", out)
        assert r.code == 3 and r.out == ""
        docs.append(out.read_text())
    assert docs[0] == docs[1]
    [plan] = json.loads(docs[0])["plans"]
    assert plan["status"] == "unknown"
    # Obligations that fold to true with every variable fixed are decided without the solver
    # (verifier/solve.py), so the budget cannot make them unknown; the solver's are unknown.
    statuses = {o["status"] for o in plan["obligations"]}
    assert "unknown" in statuses and statuses <= {"unknown", "proved"}
    # With the default budget the same plan is proved: the limit, not the plan, made it unknown.
    assert planc_process("check", ROOT / SPEC).code == 0
