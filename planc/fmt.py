"""`planc fmt`: one canonical form for .plan files, keeping every comment.

The form (specs/seeds/baseline.plan is the model):
  - blocks separated by one blank line; `kind NAME [from BASE] {` ... `}`;
  - one statement per line (`;`-joined lines are split), indented by two spaces, the values of a
    block aligned one column after its longest keyword;
  - values as written (`30e9` stays `30e9`), a space before units except `%` (`80 GB`, `90%`),
    `, ` between list items (`mesh pp=2, tp=8`, `shard heads, ffn over tp`);
  - comments kept where they were: whole-line comments at the indentation of their block,
    trailing comments two spaces after the longest line of their run of consecutive lines;
    a user's blank line inside a block or between comments is kept (several become one).
The parsed plan does not change (tests compare the AST of fmt(x) with that of x, spans aside)
and formatting is idempotent. Lark drops comments, so they are collected with a lexer callback.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import IO

from lark import Lark, Token

from planc.grammar import ast
from planc.grammar.parse import clean_text, decode_source, parse_text

INDENT = "  "


@cache
def _comment_parser() -> tuple[Lark, list[Token]]:
    sink: list[Token] = []

    def keep(tok: Token) -> Token:
        sink.append(tok)
        return tok

    grammar = resources.files("planc.grammar").joinpath("plan.lark").read_text(encoding="utf-8")
    lark = Lark(grammar, parser="lalr", lexer="contextual", lexer_callbacks={"COMMENT": keep})
    return lark, sink


def comments(text: str) -> list[tuple[int, int, str]]:
    """(line, column, text) of every comment, in order; the text must already parse."""
    lark, sink = _comment_parser()
    sink.clear()
    lark.parse(text)
    out = [(t.line or 0, t.column or 0, str(t).rstrip()) for t in sink]
    sink.clear()
    return out


# ---------------------------------------------------------------------------------------------
# Statements and values as text


def quantity(q: ast.Quantity) -> str:
    if q.unit is None:
        return q.number.text
    return q.number.text + ("%" if q.unit.name == "%" else " " + q.unit.name)


def value(v: ast.Value) -> str:
    if isinstance(v, ast.Quantity):
        return quantity(v)
    if isinstance(v, ast.NameValue):
        return v.name.name
    if isinstance(v, ast.CountValue):
        return f"{v.name.name} x {v.count.text}"
    if isinstance(v, ast.NamedQuantity):
        return f"{v.name.name} {quantity(v.quantity)}"
    return "?"


def _size(s: ast.Number | ast.Hole) -> str:
    return "?" if isinstance(s, ast.Hole) else s.text


def _option(o: ast.ShardOption) -> str:
    if isinstance(o, ast.Microbatches):
        return f"microbatches {_size(o.count)}"
    if isinstance(o, ast.FitCache):
        return "fit cache"
    if isinstance(o, ast.AttentionMode):
        return f"attention {o.mode.name}"
    return "stages " + ", ".join(f"[{r.first.text}..{r.last.text}]" for r in o.ranges)


def statement(s: ast.Statement) -> tuple[str, str]:
    """(keyword, rest) of a statement: the keyword column is aligned within a block."""
    if isinstance(s, ast.Prop):
        return s.key.name, value(s.value)
    if isinstance(s, ast.Mesh):
        return "mesh", ", ".join(f"{a.name.name}={_size(a.size)}" for a in s.axes)
    if isinstance(s, ast.Shard):
        rest = f"{', '.join(d.name for d in s.dims)} over {', '.join(a.name for a in s.axes)}"
        return "shard", " ".join([rest, *map(_option, s.options)])
    if isinstance(s, ast.Compress):
        return "compress", " ".join(w.name for w in s.words)
    if isinstance(s, ast.Require):
        return "require", f"{s.metric.name} {s.op} {quantity(s.quantity)}"
    return s.direction, s.target.name


# ---------------------------------------------------------------------------------------------
# Form


@dataclass
class _Line:
    text: str  # without the trailing comment
    comment: str | None = None
    source_line: int = 0  # where it came from, for keeping blank lines
    aligned: bool = True  # a statement line: trailing comments align with their neighbours


def _block_lines(b: ast.Block, trailing: dict[tuple[int, int], str],
                 inside: list[tuple[int, int, str]]) -> list[_Line | None]:
    """The lines of one block; None stands for a blank line."""
    head = f"{b.kind} {b.name.name}" + (f" from {b.base.name}" if b.base else "") + (
        f' from {b.source.kind.name} "{b.source.path}"' if b.source else "") + " {"
    close_key = (b.span.end_line, b.span.end_column - 1)
    if not b.body and not inside:
        line = _Line(head[:-1] + "{}", trailing.get(close_key) or trailing.get(
            (b.span.line, b.span.column)), b.span.line, False)
        return [line]
    out: list[_Line | None] = [_Line(head, trailing.get((b.span.line, b.span.column)),
                                     b.span.line, False)]
    width = max((len(statement(s)[0]) for s in b.body), default=0)
    items: list[tuple[int, int, _Line]] = []
    for s in b.body:
        kw, rest = statement(s)
        text = INDENT + kw.ljust(width) + " " + rest
        items.append((s.span.line, s.span.column,
                      _Line(text, trailing.get((s.span.line, s.span.column)), s.span.line)))
    for c_line, c_col, c_text in inside:
        items.append((c_line, c_col, _Line(INDENT + c_text, None, c_line, False)))
    items.sort(key=lambda x: (x[0], x[1]))
    prev = b.span.line
    for i, (at, _, ln) in enumerate(items):
        if i > 0 and at - prev > 1:
            out.append(None)
        out.append(ln)
        prev = at
    out.append(_Line("}", trailing.get(close_key), b.span.end_line, False))
    return out


def _align(lines: list[_Line | None]) -> list[str]:
    """Trailing comments of consecutive statement lines start in one column."""
    out: list[str] = []
    run: list[_Line] = []

    def flush() -> None:
        col = max((len(x.text) for x in run if x.comment), default=0) + 2
        out.extend(x.text + (" " * (col - len(x.text)) + x.comment if x.comment else "")
                   for x in run)
        run.clear()

    for ln in lines:
        if ln is not None and ln.aligned:
            run.append(ln)
            continue
        flush()
        if ln is None:
            out.append("")
        else:
            out.append(ln.text + ("  " + ln.comment if ln.comment else ""))
    flush()
    return out


def format_tree(tree: ast.PlanFile, found: list[tuple[int, int, str]]) -> str:
    # Every element that can end a line, to hang a trailing comment on the last one.
    ends: dict[int, int] = {}  # line -> column of the last element that starts on it

    def mark(line: int, col: int) -> None:
        ends[line] = max(col, ends.get(line, 0))

    for b in tree.blocks:
        mark(b.span.line, b.span.column)
        for s in b.body:
            mark(s.span.line, s.span.column)
        mark(b.span.end_line, b.span.end_column - 1)
    trailing: dict[tuple[int, int], str] = {}
    whole: list[tuple[int, int, str]] = []
    for line, col, text in found:
        if line in ends:
            trailing[(line, ends[line])] = text
        else:
            whole.append((line, col, text))
    lines: list[_Line | None] = []
    prev_end: int | None = None  # source line of the previous element at top level
    wi = 0
    for b in tree.blocks:
        before = []
        while wi < len(whole) and whole[wi][0] < b.span.line:
            before.append(whole[wi])
            wi += 1
        inside = []
        while wi < len(whole) and whole[wi][0] < b.span.end_line:
            inside.append(whole[wi])
            wi += 1
        if prev_end is not None:
            lines.append(None)  # one blank line after every block
        for line, _, text in before:
            if prev_end is not None and line - prev_end > 1 and lines and lines[-1] is not None:
                lines.append(None)
            lines.append(_Line(text, None, line, False))
            prev_end = line
        if before and prev_end is not None and b.span.line - prev_end > 1:
            lines.append(None)
        lines += _block_lines(b, trailing, inside)
        prev_end = b.span.end_line
    rest = whole[wi:]
    for i, (line, _, text) in enumerate(rest):
        if prev_end is not None and (i == 0 or line - prev_end > 1) and lines[-1] is not None:
            lines.append(None)
        lines.append(_Line(text, None, line, False))
        prev_end = line
    text = "\n".join(_align(lines)).rstrip("\n")
    return text + "\n" if text else ""


def format_text(text: str, path: str = "<input>") -> str:
    """The canonical form of a .plan source; raises PlancError at the first syntax error."""
    text = clean_text(text, path)
    tree = parse_text(text, path)
    return format_tree(tree, comments(text))


# ---------------------------------------------------------------------------------------------
# Files


def _diff(before: str, after: str, path: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True),
                                        after.splitlines(keepends=True),
                                        fromfile=f"a/{path}", tofile=f"b/{path}"))


def format_paths(paths: list[str], check: bool = False, diff: bool = False,
                 out: IO[str] | None = None, err: IO[str] | None = None,
                 stdin: IO[str] | None = None) -> int:
    """`planc fmt`: 0 when nothing failed (and, with --check, nothing would change), else 1.

    Without --check or --diff, changed files are rewritten atomically (mode kept). `-` formats
    standard input to standard output.
    """
    from planc.diagnostics import PlancError, render
    from planc.grammar.parse import read_source
    from planc.io import write_atomic
    from planc.pipeline import plan_files

    out = out or sys.stdout
    err = err or sys.stderr
    failed = changed = unchanged = 0
    files = [Path("-")] if paths == ["-"] else plan_files(p for p in paths if p != "-")
    if not files:
        print("planc fmt: no .plan files found", file=err)
        return 1
    for f in files:
        name = str(f)
        before = ""
        try:
            if name == "-":
                src = stdin if stdin is not None else getattr(sys.stdin, "buffer", sys.stdin)
                data = src.read()
                if isinstance(data, str):
                    data = data.encode("utf-8", "surrogateescape")
                raw = data.decode("utf-8", errors="replace")
                before = decode_source(data, "<stdin>")
            else:
                raw = f.read_bytes().decode("utf-8", errors="replace") if f.is_file() else ""
                before = read_source(f)
            after = format_text(before, "<stdin>" if name == "-" else name)
        except PlancError as e:
            print(render(e.diagnostic, {e.diagnostic.span.file: before} if e.diagnostic.span
                         else {}), file=err)
            failed += 1
            continue
        if name == "-" and not (check or diff):
            out.write(after)
        if after == raw:
            unchanged += 1
            continue
        changed += 1
        if diff:
            out.write(_diff(before, after, name) or
                      f"# {name}: only line endings or a byte-order mark would change\n")
        if check:
            print(f"would reformat {name}", file=err)
        elif not diff and name != "-":
            mode = f.stat().st_mode & 0o7777
            write_atomic(f, after)
            os.chmod(f, mode)  # the temporary file was private; keep the file's own mode
            print(f"reformatted {name}", file=err)
    if name != "-" or len(files) > 1:
        verb = "would be reformatted" if check or diff else "reformatted"
        print(f"{changed} file{'s' if changed != 1 else ''} {verb}, {unchanged} unchanged"
              + (f", {failed} could not be parsed" if failed else ""), file=err)
    return 1 if failed or (check and changed) else 0
