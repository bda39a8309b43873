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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning", "note"]


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
        return f"{self.file}:{self.line}:{self.column}"


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
        return sorted(self.items, key=Diagnostic.sort_key)

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


def _source_line(sources: dict[str, str], span: Span) -> str | None:
    text = sources.get(span.file)
    if text is None:
        return None
    lines = text.splitlines()
    if 1 <= span.line <= len(lines):
        return lines[span.line - 1].expandtabs(1)
    return None


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
            width = max(1, min(width, max(1, len(line) - d.span.column + 1)))
            out.append(f"{gutter} |")
            out.append(f"{d.span.line} | {line}")
            out.append(f"{gutter} | {' ' * (d.span.column - 1)}{'^' * width}")
    if d.hint:
        pad = " " * (len(str(d.span.line)) if d.span else 0)
        out.append(f"{pad} = hint: {d.hint}")
    for r in d.related:
        out.append(f"  note: {r.span}: {r.message}")
    return "\n".join(out)
