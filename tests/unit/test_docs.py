"""The documentation keeps up with the code: every diagnostic code in the sources is explained in
docs/diagnostics.md (and has a SARIF rule), every key, metric, dimension, unit and preset is in
docs/language.md, its examples parse and resolve, and the commands and pictures docs name exist."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from planc.cli import _parser
from planc.compiler import presets, units
from planc.compiler.resolve import KEYS_BY_KIND, METRICS, OBJECTIVES, resolve
from planc.compiler.spec import DIMS
from planc.diagnostics import Diagnostics
from planc.grammar import ast as ast_
from planc.grammar.parse import parse_text
from planc.output.rules import RULES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CODE = re.compile(r"[PEWVUR]\d{3}")
IN_TEXT = re.compile(r"(?:error|warning|note)\[([PEWVUR]\d{3})\]")


def codes_in_sources() -> dict[str, set[str]]:
    """Codes in string literals of planc/ (docstrings aside: they hold made-up examples)."""
    found: dict[str, set[str]] = {}
    for f in sorted((ROOT / "planc").rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        docstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docstrings.add(id(first.value))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) \
                    or id(node) in docstrings:
                continue
            hits = [node.value] if CODE.fullmatch(node.value) else IN_TEXT.findall(node.value)
            for code in hits:
                found.setdefault(code, set()).add(str(f.relative_to(ROOT)))
    return found


def test_the_scan_finds_codes_written_both_ways():
    found = codes_in_sources()
    assert "V400" in found and "E012" in found  # code="V400", diags.error("E012", ...)
    assert "R001" in found  # print(f"error[R001]: ...")
    assert "E201" not in found  # only in a docstring's example


def test_every_code_in_the_sources_is_documented_with_a_rule():
    documented = set(re.findall(r'<a id="([a-z]\d{3})"></a>',
                                (DOCS / "diagnostics.md").read_text()))
    missing = {c: sorted(f) for c, f in codes_in_sources().items()
               if c.lower() not in documented}
    assert not missing, f"add these codes to docs/diagnostics.md: {missing}"
    no_rule = sorted(set(codes_in_sources()) - set(RULES))
    assert not no_rule, f"add these codes to planc/output/rules.py: {no_rule}"


def test_every_documented_code_has_a_heading_an_explanation_and_a_fix():
    text = (DOCS / "diagnostics.md").read_text()
    sections = re.split(r'<a id="[a-z]\d{3}"></a>\n', text)[1:]
    assert len(sections) == len(RULES)
    for s in sections:
        code = re.match(r"### ([PEWVUR]\d{3}) ", s)
        assert code and code.group(1) in RULES, s[:80]
        assert "**Fix:**" in s, code.group(1)


LANGUAGE = (DOCS / "language.md").read_text()


@pytest.mark.parametrize("word", sorted(
    {k for keys in KEYS_BY_KIND.values() for k in keys} | set(METRICS) | set(DIMS)
    | set(presets.PRESETS) | {t for ts in OBJECTIVES.values() for t in ts}))
def test_language_md_explains_every_key_metric_dimension_preset_and_objective(word):
    assert f"`{word}`" in LANGUAGE or f"`{word} " in LANGUAGE or f" {word}`" in LANGUAGE


@pytest.mark.parametrize("unit", sorted(units.UNITS))
def test_language_md_lists_every_unit(unit):
    section = LANGUAGE.split("## Units", 1)[1].split("\n## ", 1)[0]
    prefixed = re.sub(r"^[KMGTP]i?(?=B|FLOP)", "", unit)
    assert f"`{unit}`" in section or f"`{prefixed}`" in section


def test_language_md_examples_parse_and_resolve():
    """Each example parses; each plan resolves against the definitions the page gives."""
    blocks = re.findall(r"```plan\n(.*?)```", LANGUAGE, re.DOTALL)
    assert len(blocks) >= 6
    trees = [parse_text(b, f"example{i}.plan") for i, b in enumerate(blocks)]
    definitions: dict[tuple[str, str], ast_.Block] = {}
    for t in trees:
        for b in t.blocks:
            if b.kind != "plan":
                definitions.setdefault((b.kind, b.name.name), b)
    plans = [b for t in trees for b in t.blocks if b.kind == "plan"]
    assert len(plans) >= 6
    diags = Diagnostics()
    # paths in `from hf "..."` are relative to the page, as to a plan file
    spec = resolve(ast_.PlanFile(str(DOCS / "language.md"), (*definitions.values(), *plans)),
                   diags)
    assert not diags.has_errors, [d.message for d in diags]
    assert len(spec.plans) == len(plans)


def _commands(path: Path) -> list[list[str]]:
    out = []
    for block in re.findall(r"```(?:sh|yaml)\n(.*?)```", path.read_text(), re.DOTALL):
        for line in block.splitlines():
            m = re.search(r"\bplanc ((?:check|fmt|show|graph|compile|emit|run|parse|schema)\b"
                          r"[^#|]*)", line)
            if m:
                out.append(shlex.split(m.group(1).split("||")[0]))
    return out


@pytest.mark.parametrize("doc", ["quickstart.md", "ci.md"])
def test_commands_in_the_docs_parse(doc):
    commands = _commands(DOCS / doc)
    assert commands
    for args in commands:
        _parser().parse_args(args)


def test_pictures_the_docs_show_exist():
    for doc in DOCS.glob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", doc.read_text()):
            assert (doc.parent / target).is_file(), f"{doc.name}: {target}"
            assert (doc.parent / target).stat().st_size > 10_000
