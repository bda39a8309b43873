"""Outputs are written whole or not at all, and an output that cannot be written is the user's
problem, said plainly (error[U003], exit 1), not an internal error: -o into a missing
directory or onto a directory; no temporary file is left behind."""

from __future__ import annotations

import json

import pytest

from tests.reliability.common import TP2, no_traceback, planc


@pytest.mark.parametrize("command", [("check", "--format", "json"), ("compile",), ("emit",)],
                         ids=lambda c: c[0])
def test_an_unwritable_output_is_error_u003_not_a_crash(command, tmp_path):
    for target in (tmp_path / "missing" / "out.txt", tmp_path):
        r = planc(*command, TP2, "-o", target)
        no_traceback(r)
        assert r.code == 1, r.text
        assert f"error[U003]: cannot write {target}" in r.err
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_successful_write_replaces_the_file_whole(tmp_path):
    out = tmp_path / "report.json"
    out.write_text("old")
    assert planc("check", TP2, "--format", "json", "-o", out).code == 0
    assert json.loads(out.read_text())["plans"][0]["status"] == "proved"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
