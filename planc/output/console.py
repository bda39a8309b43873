"""Terminal output: colour only on a terminal, never with NO_COLOR, and the same text otherwise.

Reports are built as plain text (the golden files and `-o FILE` see exactly that); on a terminal
`write_text` paints known parts of it (severities, verdicts, hints) with rich, matching whole
lines by pattern so user text is never read as markup. `progress` shows a spinner with the
elapsed time on stderr while something long runs, and nothing at all when stderr is not a TTY.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Literal

ColorMode = Literal["auto", "always", "never"]

# (pattern, style) applied to each line; the first group that matches gets the style.
_STYLES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\berror\[[A-Z]\d{3}\]"), "bold red"),
    (re.compile(r"\bwarning\[[A-Z]\d{3}\]"), "bold yellow"),
    (re.compile(r"\bnote\[[A-Z]\d{3}\]"), "bold cyan"),
    (re.compile(r": (VIOLATED|FAIL)\b"), "bold red"),
    (re.compile(r": (PROVED)\b"), "bold green"),
    (re.compile(r": (UNKNOWN)\b"), "bold magenta"),
    (re.compile(r"^\s+(ok\?)\s"), "cyan"),
    (re.compile(r"^\s+(ok)\s"), "green"),
    (re.compile(r"^\s+(\?\?)\s"), "bold magenta"),
    (re.compile(r"^\s*(FAIL)\b"), "bold red"),
    (re.compile(r"(= hint:)"), "bold cyan"),
    (re.compile(r"(-->)"), "blue"),
    (re.compile(r"^\s*\d* \|.*?(\^+)\s*$"), "bold red"),
    (re.compile(r"(\d+ violated|\d+ unknown)"), "bold"),
    (re.compile(r"\b(OVER)\b"), "bold red"),
)


def use_colour(stream: IO[str], mode: ColorMode = "auto") -> bool:
    if mode != "auto":
        return mode == "always"
    if os.environ.get("NO_COLOR"):  # https://no-color.org: set and not empty
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _styled(line: str):  # type: ignore[no-untyped-def]
    from rich.text import Text

    text = Text(line)
    for pattern, style in _STYLES:
        for m in pattern.finditer(line):
            g = 1 if m.groups() else 0
            text.stylize(style, m.start(g), m.end(g))
    return text


def write_text(text: str, stream: IO[str] | None = None, mode: ColorMode = "auto") -> None:
    """Write a report; coloured when `stream` is a terminal (or mode says so)."""
    out = stream if stream is not None else sys.stdout
    if not use_colour(out, mode):
        out.write(text)
        return
    from rich.console import Console

    console = Console(file=out, force_terminal=True, no_color=False, highlight=False,
                      soft_wrap=True, emoji=False, markup=False)
    for line in text.splitlines():
        console.print(_styled(line))


@contextmanager
def progress(message: str, stream: IO[str] | None = None,
             mode: ColorMode = "auto") -> Iterator[None]:
    """A spinner and elapsed seconds on a terminal while the body runs; silent otherwise.

    On a terminal the spinner line is replaced by `message ... done in 12.3 s` at the end
    (or `failed after` when the body raised).
    """
    err = stream if stream is not None else sys.stderr
    isatty = getattr(err, "isatty", None)
    if mode == "never" or not (mode == "always" or (isatty and isatty())):
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(file=err, force_terminal=True, highlight=False, markup=False,
                      no_color=bool(os.environ.get("NO_COLOR")))
    start = time.monotonic()
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False),
                   TimeElapsedColumn(), console=console, transient=True)
    ok = False
    with bar:
        bar.add_task(message, total=None)
        try:
            yield
            ok = True
        finally:
            bar.stop()
            word = "done in" if ok else "failed after"
            console.print(f"{message} {word} {time.monotonic() - start:.1f} s", highlight=False)
