"""Bad files: empty, truncated, badly encoded, huge or deeply nested input gets one diagnostic at
the right line and column, exit 1, no traceback, bounded time and memory, and no output file
touched. Every case also runs once through a real `python -m planc` process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import planc.grammar.parse as parse_mod
from planc.grammar.parse import MAX_LINE_CHARS, MAX_SOURCE_BYTES
from tests.reliability.common import TP2, no_traceback, planc, planc_process, write

GOOD = TP2.read_text()
TAIL = GOOD.split("plan tp2 {")[0]  # the definitions, without the plan

# name -> (file bytes, code, line, column, words the message must hold)
CASES: dict[str, tuple[bytes, str, int, int, str]] = {
    "empty": (b"", "E005", 1, 1, "no blocks"),
    "only_comments": (b"# a plan will go here\n\n   # later\n", "E005", 1, 1, "no blocks"),
    "only_whitespace": (b"\n\n \t \r\n", "E005", 1, 1, "no blocks"),
    "eof_in_block": (b"model m {\n  layers 2\n  hidden 4\n\n\n", "P102", 3, 11,
                     "block opened at 1:9 is not closed"),
    "eof_in_block_crlf": (b"# x\r\nmodel m {\r\n  layers 2\r\n\r\n", "P102", 3, 11,
                          "block opened at 2:9 is not closed"),
    "eof_after_comment": (b"plan p {\n  mesh tp=2\n  # the end\n", "P102", 3, 12,
                          "block opened at 1:8 is not closed"),
    "invalid_utf8": (b"model m {\n  layers \xff2\n}\n", "P002", 2, 10, "invalid UTF-8"),
    "invalid_utf8_after_wide_chars": (b"# \xc3\xa9\xc3\xa9\rmodel m { # \xe2\x82\xac \xc0\n}",
                                      "P002", 2, 15, "byte 0xc0"),
    "nul_byte": (b"model m {\n  layers 2\x00\n}\n", "P003", 2, 11, "NUL"),
    "nul_byte_cr_endings": (b"model m {\r  layers 2\r\x00}\r", "P003", 3, 1, "NUL"),
    "bom_then_error": (b"\xef\xbb\xbfmodel m {\n  layers @\n}\n", "P100", 2, 10, "'@'"),
    "crlf_error_line": (b"model m {\r\n  layers 2\r\n  layers 3 4\r\n}\r\n", "P112", 3, 12,
                        "one value per line"),
    "cr_error_line": (b"model m {\r  layers 2\r  layers 3 4\r}\r", "P112", 3, 12,
                      "one value per line"),
    "mixed_endings": (b"model m {\r\n  layers 2\r  hidden 4\n  heads ! \r\n}", "P100", 4, 9,
                      "'!'"),
    "nested_braces_100k": (b"{\n" * 100_000, "P110", 1, 1, "needs a kind, a name"),
    "nested_braces_in_block": (b"model m {\n  layers 2\n" + b"{\n" * 100_000, "P104", 3, 1,
                               "block opened at 1:9 is not closed"),
    "nested_braces_one_line": (b"{" * 100_000, "P006", 1, MAX_LINE_CHARS + 1,
                               "characters long"),
    "long_line": (b"plan p {\n  mesh " + b",".join([b"a=1"] * 60_000) + b"\n}\n", "P006", 2,
                  MAX_LINE_CHARS + 1, "characters long"),
    "million_axes": (b"plan p {\n  mesh " + b",".join([b"a=1"] * 1_000_000) + b"\n}\n", "P004",
                     1, 1, "the limit is"),
    "million_dims": (b"plan p {\n  shard " + b",".join([b"heads"] * 1_000_000) + b" over tp\n}\n",
                     "P004", 1, 1, "the limit is"),
    "huge_exponent": (b"model m {\n  layers 1e999999999\n}\n", "P107", 2, 10, "out of range"),
    "five_thousand_digits": (b"model m {\n  layers " + b"1" * 5000 + b"\n}\n", "P107", 2, 10,
                             "out of range"),
    "include": (b'include "models.plan"\n' + GOOD.encode(), "P105", 1, 1, "no `include`"),
    "import": (b"import models\n" + GOOD.encode(), "P105", 1, 1, "no `import`"),
    "include_in_block": (GOOD.replace("  layers   4\n", "  layers   4\n  include m\n").encode(),
                         "E012", 12, 3, "no `include`"),
}


def first_diagnostic(doc: dict) -> dict:
    assert doc["diagnostics"], doc
    return doc["diagnostics"][0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_gets_one_located_diagnostic_and_exit_1(name, tmp_path):
    data, code, line, col, words = CASES[name]
    f = write(tmp_path / f"{name}.plan", data)
    t0 = time.monotonic()
    r = planc("check", f, "--format", "json")
    assert time.monotonic() - t0 < 10, "bad input must be refused quickly"
    no_traceback(r)
    assert r.code == 1, r.text[-2000:]
    d = first_diagnostic(json.loads(r.out))
    assert (d["code"], d["line"], d["column"]) == (code, line, col), d
    assert words in d["message"] + (d["hint"] or ""), d
    assert len(json.loads(r.out)["diagnostics"]) <= 2, "one mistake, one diagnostic"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_leaves_outputs_untouched(name, tmp_path):
    f = write(tmp_path / f"{name}.plan", CASES[name][0])
    for command in ("compile", "emit", "parse"):
        out = write(tmp_path / f"{command}.out", b"previous contents\n")
        r = planc(command, f, "-o", out)
        no_traceback(r)
        if command == "parse" and r.code == 0:  # parse only reads: semantic errors pass it
            json.loads(out.read_text())
            continue
        assert r.code == 1, (command, r.text[-2000:])
        assert CASES[name][1] in r.err
        assert out.read_bytes() == b"previous contents\n", command
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_every_bad_file_in_a_real_process_without_a_traceback(tmp_path):
    files = [write(tmp_path / f"{name}.plan", CASES[name][0]) for name in sorted(CASES)]
    r = planc_process("check", *files, "--format", "json")
    no_traceback(r)
    assert r.code == 1
    codes = {(d["file"], d["code"]) for d in json.loads(r.out)["diagnostics"]}
    for f, name in zip(files, sorted(CASES)):
        assert (str(f), CASES[name][1]) in codes, name
    text = planc_process("check", *files)
    no_traceback(text)
    assert text.code == 1 and "input errors" in text.out
    empty = files[sorted(CASES).index("empty")]
    for command in ("compile", "emit"):
        r = planc_process(command, empty)
        no_traceback(r)
        assert r.code == 1 and "E005" in r.err


def test_a_50_mb_file_is_refused_from_its_size_without_being_read(tmp_path, monkeypatch):
    f = tmp_path / "big.plan"
    with f.open("wb") as fh:  # sparse: 50 MB on paper, nothing on disk
        fh.truncate(50 * 1024 * 1024)
    opened = []
    real_open = Path.open

    def spy(self, *a, **k):  # type: ignore[no-untyped-def]
        if self == f:
            opened.append(self)
        return real_open(self, *a, **k)

    monkeypatch.setattr(Path, "open", spy)
    r = planc("check", f)
    assert r.code == 1 and "P004" in r.out and "52,428,800 bytes" in r.out
    assert f"the limit is {MAX_SOURCE_BYTES:,}" in r.out
    assert not opened, "the file was opened although its size alone refuses it"


def test_the_largest_lists_that_fit_are_checked_in_bounded_time(tmp_path):
    # 1,000 distinct axes on one line: under both caps, so parsed, resolved and reported.
    axes = ", ".join(f"a{i}=1" for i in range(1000))
    f = write(tmp_path / "wide.plan", GOOD.replace("mesh     tp=2", f"mesh tp=2, {axes}"))
    assert len(f.read_text().splitlines()[28]) < MAX_LINE_CHARS
    t0 = time.monotonic()
    r = planc("check", f, "--format", "json")
    assert time.monotonic() - t0 < 30
    no_traceback(r)
    doc = json.loads(r.out)
    assert [p["status"] for p in doc["plans"]] == ["proved"] and doc["diagnostics"] == []


@pytest.mark.slow
def test_a_file_of_thousands_of_errors_reports_a_hundred_and_a_count(tmp_path):
    lines = "".join(f"  key{i} 1\n" for i in range(5_000))
    f = write(tmp_path / "many.plan", TAIL + "plan p {\n" + lines + "}\n")
    assert f.stat().st_size < MAX_SOURCE_BYTES
    t0 = time.monotonic()
    r = planc("check", f)
    assert time.monotonic() - t0 < 60
    no_traceback(r)
    assert r.code == 1
    assert r.out.count("error[") == 100
    assert "note[N001]: 4,903 more diagnostics not shown (4,903 errors)" in r.out


def test_a_file_that_grows_past_the_cap_while_read_is_refused(tmp_path, monkeypatch):
    f = write(tmp_path / "grows.plan", GOOD)
    monkeypatch.setattr(parse_mod, "MAX_SOURCE_BYTES", 100)  # stat says small: read says big
    real_stat = Path.stat

    def small(self, **k):  # type: ignore[no-untyped-def]
        st = real_stat(self, **k)
        if self != f:
            return st
        fields = list(st)[:10]
        fields[6] = 10  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(Path, "stat", small)
    r = planc("check", f)
    assert r.code == 1 and "P004" in r.out and "more than 100 bytes" in r.out


def test_bom_and_line_endings_do_not_move_positions(tmp_path):
    base = "model m {\n  layers 2\n  hiden 4\n}\n"
    want = None
    for name, data in {"lf": base.encode(), "crlf": base.replace("\n", "\r\n").encode(),
                       "cr": base.replace("\n", "\r").encode(),
                       "bom": b"\xef\xbb\xbf" + base.encode()}.items():
        r = planc("check", write(tmp_path / f"{name}.plan", data), "--format", "json")
        got = [(d["code"], d["line"], d["column"]) for d in json.loads(r.out)["diagnostics"]]
        assert ("E012", 3, 3) in got, (name, got)
        want = want or got
        assert got == want, name
