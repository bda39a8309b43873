"""A file name cannot forge a report line: control characters in names are escaped in text and
GitHub output (a newline in a file name used to start a line of its own)."""

from __future__ import annotations

import pytest

from planc.cli import main
from tests.helpers import plan_text

FORGED = "a\nerror[E999]: forged\x1b[31m\u2028.plan"


def lines_of(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    main(args)
    out = capsys.readouterr()
    return (out.out + out.err).split("\n")


@pytest.mark.parametrize("fmt", ["text", "github"])
def test_a_file_name_with_a_newline_and_escape_codes_stays_on_its_line(tmp_path, capsys, fmt):
    bad = plan_text("  mesh tp=16\n  shard heads, kv_heads, ffn over tp\n  require memory <= 1%\n")
    (tmp_path / FORGED).write_text(bad)
    lines = lines_of(["check", str(tmp_path), "--format", fmt, "--color", "never"], capsys)
    assert not [ln for ln in lines if ln.lstrip().startswith("error[E999]")]
    text = "\n".join(lines)
    assert "\x1b" not in text and "\u2028" not in text
    assert "a\\nerror[E999]: forged\\x1b[31m\\u2028.plan" in text.replace("%3A", ":")


def test_an_unreadable_path_with_a_newline_is_one_line(tmp_path, capsys):
    lines = lines_of(["check", str(tmp_path / FORGED), "--color", "never"], capsys)
    assert not any(ln.startswith("error[E999]") for ln in lines)
    assert any(ln.startswith("error[P001]") and "forged" in ln for ln in lines)
