"""The parser: valid input becomes an AST with spans; bad input a diagnostic at the right spot."""

from __future__ import annotations

from fractions import Fraction

import pytest

from planc.diagnostics import PlancError
from planc.grammar import ast
from planc.grammar.parse import MAX_SOURCE_BYTES, decode_source, parse_text


def syntax_error(text: str) -> tuple[str, int, int, str]:
    with pytest.raises(PlancError) as e:
        parse_text(text, "bad.plan")
    d = e.value.diagnostic
    assert d.span is not None
    return d.code, d.span.line, d.span.column, d.message


def test_blocks_statements_and_spans_are_parsed():
    text = "model m {\n  layers 16\n  hidden 4096\n}\nplan p {\n  mesh pp=2, tp=?\n" \
           "  shard heads, ffn over tp\n  shard layers over pp microbatches 8 stages [0..7], [8..15]\n" \
           "  require memory <= 90%\n  compress mlp sparse 2:4\n  minimize time\n}\n"
    f = parse_text(text, "x.plan")
    model, plan = f.blocks
    assert model.kind == "model" and model.name.name == "m"
    layers = model.body[0]
    assert isinstance(layers, ast.Prop) and layers.key.name == "layers"
    assert (layers.span.line, layers.span.column) == (2, 3)
    mesh = plan.body[0]
    assert isinstance(mesh, ast.Mesh)
    assert [a.name.name for a in mesh.axes] == ["pp", "tp"]
    assert isinstance(mesh.axes[1].size, ast.Hole)
    shard = plan.body[1]
    assert isinstance(shard, ast.Shard)
    assert [d.name for d in shard.dims] == ["heads", "ffn"] and [a.name for a in shard.axes] == ["tp"]
    stages = plan.body[2].options[1]
    assert isinstance(stages, ast.Stages)
    assert [(r.first.value, r.last.value) for r in stages.ranges] == [(0, 7), (8, 15)]
    req = plan.body[3]
    assert isinstance(req, ast.Require) and req.op == "<=" and req.quantity.unit.name == "%"
    assert [w.name for w in plan.body[4].words] == ["mlp", "sparse", "2:4"]
    assert plan.body[5].direction == "minimize"


def test_numbers_are_exact_fractions():
    f = parse_text("device d {\n bandwidth 3.35 TB/s\n memory 1e3 GB\n}\n")
    bw, mem = f.blocks[0].body
    assert bw.value.number.value == Fraction(335, 100)
    assert mem.value.number.value == 1000


def test_statements_may_share_a_line_with_semicolons():
    f = parse_text("workload w { batch 128; seq 10000; phase prefill }")
    assert [s.key.name for s in f.blocks[0].body] == ["batch", "seq", "phase"]


@pytest.mark.parametrize("text,code,line,col", [
    ("model m {\n  layers\n}\n", "P111", 2, 9),
    ("model m {\n  layers 2 3\n}\n", "P112", 2, 12),
    ("plan p {\n  mesh tp\n}\n", "P113", 2, 10),
    ("plan p {\n  shard heads tp\n}\n", "P114", 2, 15),
    ("plan p {\n  require memory 90%\n}\n", "P115", 2, 18),
    ("plan p {\n  shard layers over pp stages [0..3\n}\n", "P116", 2, 36),
    ("plan p {\n  shard layers over pp stages [0-3]\n}\n", "P100", 2, 33),
    ("model m {\n  layers @\n}\n", "P100", 2, 10),
    ("model m {\n  a {\n}\n", "P104", 2, 5),
])
def test_syntax_errors_have_codes_and_positions(text, code, line, col):
    got = syntax_error(text)
    assert got[:3] == (code, line, col), got


def test_unknown_block_kind_suggests_the_closest():
    code, line, col, _ = syntax_error("\n\nmodle m {\n}\n")
    assert (code, line, col) == ("P103", 3, 1)
    with pytest.raises(PlancError) as e:
        parse_text("modle m {\n}\n")
    assert "did you mean 'model'" in (e.value.diagnostic.hint or "")


def test_eof_inside_a_block_names_where_it_opened():
    with pytest.raises(PlancError) as e:
        parse_text("model m {\n  layers 2\n\nplan p {\n  mesh tp=2\n", "x.plan")
    d = e.value.diagnostic  # a new block starts while `model m` is open: say where it opened
    assert (d.code, d.span.line, d.span.column) == ("P104", 4, 8)
    assert "1:9" in d.message and d.related[0].span.line == 1
    with pytest.raises(PlancError) as e:
        parse_text("model m {\n  layers 2\n  hidden 4\n\n", "x.plan")
    d = e.value.diagnostic
    assert d.code == "P102"
    assert d.span.line == 3  # the real last line, not past the end
    assert "opened at 1:9" in d.message and d.related[0].span.line == 1


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_and_cr_line_endings_keep_line_numbers(newline):
    text = newline.join(["model m {", "  layers 2", "  layers 3 4", "}"]) + newline
    code, line, _, _ = syntax_error(text)
    assert (code, line) == ("P112", 3)


def test_bom_is_ignored_and_invalid_utf8_is_located():
    assert decode_source(b"\xef\xbb\xbfmodel m {\n}\n", "x").startswith("model")
    with pytest.raises(PlancError) as e:
        decode_source(b"model m {\n  layers \xff2\n}\n", "x.plan")
    d = e.value.diagnostic
    assert (d.code, d.span.line, d.span.column) == ("P002", 2, 10)


def test_nul_bytes_and_oversized_files_are_refused():
    with pytest.raises(PlancError) as e:
        decode_source(b"model m {\n\x00}\n", "x")
    assert e.value.diagnostic.code == "P003" and e.value.diagnostic.span.line == 2
    with pytest.raises(PlancError) as e:
        decode_source(b"#" * (MAX_SOURCE_BYTES + 1), "x")
    assert e.value.diagnostic.code == "P004"


def test_comments_and_empty_files_parse_to_nothing():
    assert parse_text("").blocks == ()
    assert parse_text("# only a comment\n\n# another\n").blocks == ()
