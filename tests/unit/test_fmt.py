"""`planc fmt`: the canonical form keeps the parsed plan (AST modulo spans) and every comment,
is idempotent, and `--check` / `--diff` / in-place rewriting behave like other formatters."""

from __future__ import annotations

import dataclasses
import random
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planc.cli import main
from planc.diagnostics import PlancError
from planc.fmt import comments, format_text
from planc.grammar.parse import parse_text

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").rglob("*.plan"))
GOLDEN = [p for p in sorted((ROOT / "tests" / "golden").glob("*.plan"))
          if p.name != "bad_syntax.plan"]
ALL = SPECS + GOLDEN
IDS = [p.relative_to(ROOT).as_posix() for p in ALL]


def shape(x: Any) -> Any:
    """An AST node without positions: what a plan means, not where it was written."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x).__name__, tuple((f.name, shape(getattr(x, f.name)))
                                        for f in dataclasses.fields(x)
                                        if f.name not in ("span", "path", "path_span")))
    if isinstance(x, tuple):
        return tuple(shape(i) for i in x)
    return x


def comment_texts(text: str) -> list[str]:
    return [c for _, _, c in comments(text)]


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_fmt_keeps_the_ast_and_every_comment_and_is_idempotent(path: Path):
    text = path.read_text()
    out = format_text(text, "x.plan")
    assert shape(parse_text(out, "x.plan")) == shape(parse_text(text, "x.plan"))
    assert comment_texts(out) == [c.rstrip() for c in comment_texts(text)]
    assert format_text(out, "x.plan") == out


def test_every_spec_is_already_formatted(capsys):
    assert main(["fmt", "--check", str(ROOT / "specs")]) == 0
    assert "0 files would be reformatted" in capsys.readouterr().err


def test_the_layout_splits_semicolons_aligns_values_and_separates_blocks():
    src = ("model m{layers 2;hidden 64 ;  heads 4\n ffn 128 }\n\n\n\n"
           "plan p {model m; cluster c;workload w\nmesh pp=2,tp=?\n"
           "shard layers over pp microbatches 2 fit cache ; shard heads,ffn over tp\n"
           "require memory<=90 %\nrequire throughput >= 1e3 tokens/s\ncompress mlp sparse 2:4\n"
           "minimize time}\ndevice D from H100 {}\n")
    assert format_text(src) == (
        "model m {\n"
        "  layers 2\n"
        "  hidden 64\n"
        "  heads  4\n"
        "  ffn    128\n"
        "}\n"
        "\n"
        "plan p {\n"
        "  model    m\n"
        "  cluster  c\n"
        "  workload w\n"
        "  mesh     pp=2, tp=?\n"
        "  shard    layers over pp microbatches 2 fit cache\n"
        "  shard    heads, ffn over tp\n"
        "  require  memory <= 90%\n"
        "  require  throughput >= 1e3 tokens/s\n"
        "  compress mlp sparse 2:4\n"
        "  minimize time\n"
        "}\n"
        "\n"
        "device D from H100 {}\n")


def test_comments_stay_where_they_were():
    src = ("# header\n\n# about m\nmodel m {  # on the header\n"
           "  # first in the block\n  layers 2 # short\n  hidden 4096   # aligned\n\n"
           "  heads 32\n  # last in the block\n} # after the brace\n"
           "# about c, no blank line\ncluster c { device H100 x 16 }\n\n\n# trailer\n")
    assert format_text(src) == (
        "# header\n"
        "\n"
        "# about m\n"
        "model m {  # on the header\n"
        "  # first in the block\n"
        "  layers 2     # short\n"
        "  hidden 4096  # aligned\n"
        "\n"
        "  heads  32\n"
        "  # last in the block\n"
        "}  # after the brace\n"
        "\n"
        "# about c, no blank line\n"
        "cluster c {\n"
        "  device H100 x 16\n"
        "}\n"
        "\n"
        "# trailer\n")


def test_a_comment_on_a_semicolon_line_follows_its_last_statement():
    out = format_text("model m {\n  layers 2; hidden 64  # both\n  heads 4\n}\n")
    assert out == "model m {\n  layers 2\n  hidden 64  # both\n  heads  4\n}\n"


def _uglify(text: str, rng: random.Random) -> str:
    """The same plan written carelessly: odd spacing, joined lines, extra blank lines."""
    out: list[str] = []
    for line in text.split("\n"):
        code, hash_, comment = line.partition("#")
        code = re.sub(r"(?<=\S) +(?=\S)", lambda _: rng.choice([" ", "  ", "\t", "   "]),
                      code.strip())
        code = re.sub(r",\s*", lambda _: rng.choice([",", ", ", " , "]), code)
        indent = rng.choice(["", " ", "    ", "\t"]) if code.strip() != "}" else ""
        new = indent + code + (rng.choice([" ", "   "]) + hash_ + comment if hash_ else "")
        joinable = (out and not hash_ and code and "{" not in code and "}" not in code
                    and "#" not in out[-1] and out[-1].strip() and "{" not in out[-1]
                    and "}" not in out[-1])
        if joinable and rng.random() < 0.4:
            out[-1] += rng.choice([";", "; ", " ;  "]) + code
        else:
            out.append(new)
        if code.strip() == "}" and rng.random() < 0.5:
            out.append("")
    return "\n".join(out)


@settings(max_examples=15, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from(ALL))
def test_carelessly_written_plans_format_to_the_canonical_text(rng, path):
    text = path.read_text()
    ugly = _uglify(text, rng)
    assert shape(parse_text(ugly, "x.plan")) == shape(parse_text(text, "x.plan"))
    assert format_text(ugly, "x.plan") == format_text(text, "x.plan")


# ---------------------------------------------------------------------------------------------
# The command


UGLY = "model m {\nlayers 2;hidden 64\n}\n"
PRETTY = "model m {\n  layers 2\n  hidden 64\n}\n"


def test_check_reports_files_that_would_change_and_changes_nothing(tmp_path, capsys):
    bad, good = tmp_path / "a.plan", tmp_path / "b.plan"
    bad.write_text(UGLY)
    good.write_text(PRETTY)
    assert main(["fmt", "--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"would reformat {bad}" in err and str(good) not in err.replace(str(bad), "")
    assert bad.read_text() == UGLY
    assert main(["fmt", "--check", str(good)]) == 0


def test_diff_prints_a_unified_diff_and_changes_nothing(tmp_path, capsys):
    f = tmp_path / "a.plan"
    f.write_text(UGLY)
    assert main(["fmt", "--diff", str(f)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"--- a/{f}\n+++ b/{f}\n@@")
    assert "-layers 2;hidden 64\n+  layers 2\n+  hidden 64\n" in out
    assert f.read_text() == UGLY
    assert main(["fmt", "--diff", "--check", str(f)]) == 1


def test_fmt_rewrites_in_place_keeping_the_mode_and_then_has_nothing_to_do(tmp_path, capsys):
    f = tmp_path / "a.plan"
    f.write_text(UGLY)
    f.chmod(0o644)
    assert main(["fmt", str(f)]) == 0
    assert f.read_text() == PRETTY
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert f"reformatted {f}" in capsys.readouterr().err
    assert main(["fmt", str(f)]) == 0
    assert "0 files reformatted, 1 unchanged" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.plan"]


def test_crlf_and_bom_are_normalised(tmp_path):
    f = tmp_path / "a.plan"
    f.write_bytes(b"\xef\xbb\xbf" + PRETTY.replace("\n", "\r\n").encode())
    assert main(["fmt", "--check", str(f)]) == 1
    assert main(["fmt", str(f)]) == 0
    assert f.read_bytes() == PRETTY.encode()


def test_a_syntax_error_is_reported_with_its_line_and_the_file_left_alone(tmp_path, capsys):
    f = tmp_path / "a.plan"
    f.write_text("model m {\n  layers 2 3\n}\n")
    assert main(["fmt", str(f)]) == 1
    err = capsys.readouterr().err
    assert "error[P112]" in err and f"{f}:2:12" in err
    assert f.read_text() == "model m {\n  layers 2 3\n}\n"
    with pytest.raises(PlancError):
        format_text("model m {\n")


def test_stdin_is_formatted_to_stdout(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(UGLY))
    assert main(["fmt", "-"]) == 0
    assert capsys.readouterr().out == PRETTY
