"""Parsing: source bytes -> AST (`PlanFile`), stopping at the first syntax error.

Input hygiene happens before lark sees anything: a size cap, UTF-8 decoding with the position of
the first bad byte, NUL bytes refused, a BOM dropped, CRLF and CR normalised to LF (so line
numbers match what an editor shows). Lark's exceptions never leave this module: each becomes a
`PlancError` carrying a `Diagnostic` with a code, a span and a hint.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from planc.diagnostics import Diagnostic, PlancError, Related, Span, did_you_mean
from planc.grammar import ast
from planc.grammar.syntax_errors import SYNTAX_ERRORS

MAX_SOURCE_BYTES = 4 * 1024 * 1024  # a plan is a few kB; anything this big is a mistake
KINDS = ("device", "cluster", "model", "workload", "plan")


@cache
def parser() -> Lark:
    grammar = resources.files("planc.grammar").joinpath("plan.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True)


def _fail(code: str, message: str, span: Span | None, hint: str | None = None,
          related: tuple[Related, ...] = ()) -> PlancError:
    return PlancError(Diagnostic(code, message, span, "error", hint, related))


def decode_source(data: bytes, path: str) -> str:
    """Bytes -> text with LF line endings, or a PlancError saying where the bytes went wrong."""
    if len(data) > MAX_SOURCE_BYTES:
        raise _fail("P004", f"file is {len(data):,} bytes; the limit is {MAX_SOURCE_BYTES:,}",
                    Span.point(path, 1, 1), "a .plan file is a few kB; is this the right file?")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        raise _fail("P002", f"invalid UTF-8 (byte 0x{data[e.start]:02x})",
                    Span.point(path, line, col), "save the file as UTF-8") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        col = nul - (text.rfind("\n", 0, nul) + 1) + 1
        raise _fail("P003", "NUL byte in source", Span.point(path, line, col),
                    "a .plan file is text; remove the NUL byte")
    return text


def read_source(path: str | Path) -> str:
    p = Path(path)
    where = Span.point(str(path), 1, 1)
    if p.is_dir():
        raise _fail("P001", f"{path} is a directory", None, "give a .plan file")
    if not p.exists():
        raise _fail("P001", f"no such file: {path}", None, "check the path")
    if not p.is_file():
        raise _fail("P001", f"{path} is not a regular file", None, "give a .plan file")
    try:
        with p.open("rb") as f:
            data = f.read(MAX_SOURCE_BYTES + 1)
    except OSError as e:
        raise _fail("P001", f"cannot read {path}: {e.strerror}", where) from None
    return decode_source(data, str(path))


def parse_file(path: str | Path) -> tuple[ast.PlanFile, str]:
    text = read_source(path)
    return parse_text(text, str(path)), text


def parse_text(text: str, path: str = "<input>") -> ast.PlanFile:
    text = decode_source(text.encode("utf-8"), path) if ("\r" in text or "\0" in text) else text
    try:
        tree = parser().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, path) from None
    return _ToAst(path).transform(tree)


# ---------------------------------------------------------------------------------------------
# Syntax errors


def _token_span(path: str, tok: Token) -> Span:
    end_col = tok.end_column if tok.end_column is not None else tok.column + max(1, len(tok))
    return Span(path, tok.line, tok.column, tok.end_line or tok.line, end_col)


def _open_blocks(text: str, upto_line: int) -> list[tuple[int, int]]:
    """Positions of '{' still open before a given line (comments skipped)."""
    stack: list[tuple[int, int]] = []
    for i, raw in enumerate(text.split("\n"), start=1):
        if i > upto_line:
            break
        line = raw.split("#", 1)[0]
        for j, ch in enumerate(line, start=1):
            if ch == "{":
                stack.append((i, j))
            elif ch == "}" and stack:
                stack.pop()
    return stack


def _last_line(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    return len(lines), len(lines[-1]) + 1


def _syntax_error(e: UnexpectedInput, text: str, path: str) -> PlancError:
    if isinstance(e, UnexpectedEOF) or (
        isinstance(e, UnexpectedToken) and e.token.type == "$END"
    ):
        line, col = _last_line(text)
        opened = _open_blocks(text, line)
        if opened:
            ol, oc = opened[-1]
            return _fail("P102", f"end of file inside a block: the block opened at {ol}:{oc} "
                         "is not closed", Span.point(path, line, col), "add '}' to close it",
                         (Related(Span.point(path, ol, oc), "block opened here"),))
        return _fail("P102", "unexpected end of file", Span.point(path, line, col))
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        shown = repr(ch)
        hint = None
        if ch in "\"'":
            hint = "names are plain identifiers (letters, digits, _); no quotes"
        elif ch == "{":
            hint = "blocks do not nest; close the current block first"
        return _fail("P100", f"unexpected character {shown}", Span.point(path, e.line, e.column),
                     hint or "see docs/language.md for what a line can hold")
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    span = _token_span(path, tok)
    expected = sorted(x for x in e.expected if not x.startswith("_"))
    if str(tok).isidentifier() and "KIND" in e.expected and "NAME" not in e.expected:
        guess = did_you_mean(str(tok), KINDS)
        return _fail("P103", f"unknown block kind {str(tok)!r}", span,
                     f"did you mean {guess!r}?" if guess else "kinds: " + ", ".join(KINDS))
    if tok.type == "LBRACE" or str(tok) == "{":
        opened = [o for o in _open_blocks(text, tok.line) if o != (tok.line, tok.column)]
        related: tuple[Related, ...] = ()
        if opened:
            ol, oc = opened[-1]
            related = (Related(Span.point(path, ol, oc), "the block still open here"),)
        return _fail("P104", "blocks do not nest" + (
            f": the block opened at {opened[-1][0]}:{opened[-1][1]} is not closed" if opened
            else ""), span, "close the current block with '}' before starting another", related)
    label = _label(e)
    shown = "end of line" if tok.type == "_NEWLINE" else repr(str(tok))
    for code, message, hint, _ in SYNTAX_ERRORS:
        if code == label:
            return _fail(code, f"{message} (found {shown})", span, hint)
    return _fail("P101", f"unexpected {shown}", span,
                 "expected one of: " + ", ".join(_pretty(x) for x in expected))


@cache
def _example_table() -> tuple[dict[tuple[int, str], str], dict[int, str]]:
    """(top LALR state, token type) -> label, learnt by parsing the known-bad examples.

    Like lark's match_examples, but keyed on the top state only: the same mistake after one
    statement or after ten leaves different stacks under the same top state.
    """
    exact: dict[tuple[int, str], str] = {}
    by_state: dict[int, str] = {}
    for code, _, _, examples in SYNTAX_ERRORS:
        for ex in examples:
            try:
                parser().parse(ex)
            except UnexpectedToken as u:
                pos = u.interactive_parser.parser_state.position
                exact.setdefault((pos, u.token.type), code)
                by_state.setdefault(pos, code)
            except UnexpectedInput:
                continue
    return exact, by_state


def _label(e: UnexpectedToken) -> str | None:
    ip = getattr(e, "interactive_parser", None)
    if ip is None:
        return None
    pos = ip.parser_state.position
    exact, by_state = _example_table()
    return exact.get((pos, e.token.type)) or by_state.get(pos)


_TERMINAL_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "UNIT": "a unit", "HOLE": "'?'", "RATIO": "a ratio",
    "COMPARE": "a comparison", "KIND": "a block kind", "LBRACE": "'{'", "RBRACE": "'}'",
    "COMMA": "','", "EQUAL": "'='", "SEMICOLON": "';'", "$END": "end of file",
}


def _pretty(terminal: str) -> str:
    if terminal in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[terminal]
    pattern = parser().get_terminal(terminal).pattern.value if terminal in {
        t.name for t in parser().terminals} else terminal
    return repr(pattern)


# ---------------------------------------------------------------------------------------------
# Tree -> AST


def _number(path: str, tok: Token) -> ast.Number:
    text = str(tok)
    return ast.Number(Fraction(text.replace("_", "")), text, _token_span(path, tok))


def _ident(path: str, tok: Token) -> ast.Ident:
    return ast.Ident(str(tok), _token_span(path, tok))


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _span(self, meta) -> Span:
        return Span(self.path, meta.line, meta.column, meta.end_line, meta.end_column)

    def start(self, meta, blocks):
        return ast.PlanFile(self.path, tuple(blocks))

    def block(self, meta, items):
        kind, name, *rest = items
        base = next((x.ident for x in rest if isinstance(x, _Base)), None)
        body = tuple(x for x in rest if not isinstance(x, _Base))
        return ast.Block(str(kind), _ident(self.path, name), base, body, self._span(meta))

    def base(self, meta, items):
        return _Base(_ident(self.path, items[0]))

    def key(self, meta, items):
        return _ident(self.path, items[0])

    def prop(self, meta, items):
        return ast.Prop(items[0], items[1], self._span(meta))

    def quantity(self, meta, items):
        num = _number(self.path, items[0])
        unit = _ident(self.path, items[1]) if len(items) > 1 else None
        return ast.Quantity(num, unit, self._span(meta))

    def v_quantity(self, meta, items):
        return items[0]

    def v_name(self, meta, items):
        return ast.NameValue(_ident(self.path, items[0]), self._span(meta))

    def v_count(self, meta, items):
        return ast.CountValue(_ident(self.path, items[0]), _number(self.path, items[1]),
                              self._span(meta))

    def v_named_quantity(self, meta, items):
        return ast.NamedQuantity(_ident(self.path, items[0]), items[1], self._span(meta))

    def v_hole(self, meta, items):
        return ast.Hole(self._span(meta))

    def _size(self, tok: Token) -> ast.Number | ast.Hole:
        if tok.type == "HOLE":
            return ast.Hole(_token_span(self.path, tok))
        return _number(self.path, tok)

    def axis_size(self, meta, items):
        return ast.AxisSize(_ident(self.path, items[0]), self._size(items[1]), self._span(meta))

    def mesh(self, meta, items):
        return ast.Mesh(tuple(items), self._span(meta))

    def names(self, meta, items):
        return tuple(_ident(self.path, t) for t in items)

    def shard(self, meta, items):
        dims, axes, *options = items
        return ast.Shard(dims, axes, tuple(options), self._span(meta))

    def opt_microbatches(self, meta, items):
        return ast.Microbatches(self._size(items[0]), self._span(meta))

    def opt_fit_cache(self, meta, items):
        return ast.FitCache(self._span(meta))

    def opt_attention(self, meta, items):
        return ast.AttentionMode(_ident(self.path, items[0]), self._span(meta))

    def stage_range(self, meta, items):
        return ast.StageRange(_number(self.path, items[0]), _number(self.path, items[1]),
                              self._span(meta))

    def opt_stages(self, meta, items):
        return ast.Stages(tuple(items), self._span(meta))

    def compress(self, meta, items):
        return ast.Compress(tuple(_ident(self.path, t) for t in items), self._span(meta))

    def require(self, meta, items):
        return ast.Require(_ident(self.path, items[0]), str(items[1]), items[2],
                           self._span(meta))

    def objective(self, meta, items):
        return ast.Objective(str(items[0]), _ident(self.path, items[1]), self._span(meta))


class _Base:
    def __init__(self, ident: ast.Ident):
        self.ident = ident

