"""Diagnostics: every problem planc reports, with a stable code, a source span and a hint.

A `Diagnostic` has a primary span and related spans (CUE-style: every position that contributed).
Semantic errors are collected in a `Diagnostics` list and reported together, sorted by position;
syntax errors stop parsing at the first one. Rendering is rustc-like:

    error[E201]: heads (32) is not divisible by tp (3)
      --> specs/x.plan:12:9
       |
    12 |   shard heads over tp
       |         ^^^^^
       = hint: tp must divide 32; try tp in {1, 2, 4, 8, 16, 32}
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

Severity = Literal["error", "warning", "note"]
# Diagnostics reported per collector (one file): past this, more of the same helps nobody and a
# generated file with 60,000 bad lines would print for minutes (clang stops at 20 errors).
MAX_REPORTED = 100
SHOWN_LINE_CHARS = 160  # a longer source line is shown as a window around the span
# C0 and C1 controls, DEL, line and paragraph separators, bidi overrides: in a name (a file
# name) they would start a new report line, move the cursor or reorder what a reader sees
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(name: str) -> str:
    """A name as text output shows it: control characters escaped (`\\n`, `\\x1b`, `\\u2028`),
    so a file name cannot forge a diagnostic line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), name)


@dataclass(frozen=True, order=True)
class Span:
    """A region of a source file; lines and columns are 1-based, end is exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def point(file: str, line: int, column: int) -> Span:
        return Span(file, line, column, line, column + 1)

    def __str__(self) -> str:
        return f"{printable(self.file)}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Related:
    span: Span
    message: str


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None
    severity: Severity = "error"
    hint: str | None = None
    related: tuple[Related, ...] = ()

    def sort_key(self) -> tuple[str, int, int, str]:
        if self.span is None:
            return ("", 0, 0, self.code)
        return (self.span.file, self.span.line, self.span.column, self.code)


@dataclass
class Diagnostics:
    """A collector passed through the passes; a pass appends, never raises, for user errors."""

    items: list[Diagnostic] = field(default_factory=list)

    def add(self, d: Diagnostic) -> None:
        self.items.append(d)

    def error(
        self,
        code: str,
        message: str,
        span: Span | None,
        hint: str | None = None,
        related: Iterable[Related] = (),
    ) -> None:
        self.add(Diagnostic(code, message, span, "error", hint, tuple(related)))

    def warning(
        self,
        code: str,
        message: str,
        span: Span | None,
        hint: str | None = None,
        related: Iterable[Related] = (),
    ) -> None:
        self.add(Diagnostic(code, message, span, "warning", hint, tuple(related)))

    def extend(self, other: Iterable[Diagnostic]) -> None:
        self.items.extend(other)

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        """In report order, each once (a line inherited with `from` is resolved in every block
        that inherits it), at most MAX_REPORTED, then a note counting the ones left out."""
        items = sorted(dict.fromkeys(self.items), key=Diagnostic.sort_key)
        if len(items) <= MAX_REPORTED:
            return items
        rest = items[MAX_REPORTED:]
        errors = sum(1 for d in rest if d.severity == "error")
        return items[:MAX_REPORTED] + [Diagnostic(
            "N001", f"{len(rest):,} more diagnostics not shown ({errors:,} errors)",
            None, "note", "fix the ones above first: many often come from one mistake")]

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(self.sorted())

    def __len__(self) -> int:
        return len(self.items)


class PlancError(Exception):
    """Raised for a user-facing failure that stops a stage (a syntax error, an unreadable file)."""

    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to a misspelt word, or None when nothing is close."""
    options = sorted(set(choices))
    best = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not best:
        lowered = {c.lower(): c for c in options}
        best = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        best = [lowered[b] for b in best]
    return best[0] if best else None


def one_of(choices: Iterable[str]) -> str:
    return ", ".join(sorted(set(choices)))


# ---------------------------------------------------------------------------------------------
# Rendering


@lru_cache(maxsize=16)
def _lines(text: str) -> list[str]:
    return text.split("\n")  # sources are LF-normalised; split once per file, not per diagnostic


def _source_line(sources: dict[str, str], span: Span) -> str | None:
    text = sources.get(span.file)
    if text is None:
        return None
    lines = _lines(text)
    if 1 <= span.line <= len(lines):
        return lines[span.line - 1].expandtabs(1)
    return None


def _window(line: str, column: int) -> tuple[str, int]:
    """A long line cut to SHOWN_LINE_CHARS around `column`; returns it and the new column."""
    if len(line) <= SHOWN_LINE_CHARS:
        return line, column
    start = max(0, min(column - 1 - SHOWN_LINE_CHARS // 2, len(line) - SHOWN_LINE_CHARS))
    end = start + SHOWN_LINE_CHARS
    head = "..." if start > 0 else ""
    tail = "..." if end < len(line) else ""
    return head + line[start:end] + tail, column - start + len(head)


def render(d: Diagnostic, sources: dict[str, str]) -> str:
    """A diagnostic as text with the source line and a caret under the span."""
    out = [f"{d.severity}[{d.code}]: {d.message}"]
    if d.span is not None:
        gutter = " " * len(str(d.span.line))
        out.append(f"{gutter}--> {d.span}")
        line = _source_line(sources, d.span)
        if line is not None:
            width = (
                d.span.end_column - d.span.column
                if d.span.end_line == d.span.line and d.span.end_column > d.span.column
                else 1
            )
            line, column = _window(line, d.span.column)
            width = max(1, min(width, max(1, len(line) - column + 1)))
            out.append(f"{gutter} |")
            out.append(f"{d.span.line} | {line}")
            out.append(f"{gutter} | {' ' * (column - 1)}{'^' * width}")
    if d.hint:
        pad = " " * (len(str(d.span.line)) if d.span else 0)
        out.append(f"{pad} = hint: {d.hint}")
    for r in d.related:
        out.append(f"  note: {r.span}: {r.message}")
    return "\n".join(out)
