"""GitHub Actions annotations: one workflow command per problem, escaped so user text cannot
forge a command.

The runner reads `::error file=F,line=L,col=C,endLine=..,endColumn=..,title=T::MESSAGE` from a
step's output. Escaping follows @actions/core (toolkit `command.ts`): in the message `%`, `\\r`
and `\\n` become `%25`, `%0D`, `%0A`; in property values `:` and `,` also become `%3A`, `%2C`.
So a file name or message holding a newline and `::error` stays inside its own annotation; file
names also have their other control characters escaped (diagnostics.printable).
Proved obligations produce nothing; a summary line closes the output.
"""

from __future__ import annotations

from planc.diagnostics import printable
from planc.output.findings import Finding, findings, relative_path
from planc.verifier.report import CheckResult

COMMAND = {"error": "error", "warning": "warning", "note": "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(name: str, properties: dict[str, str | int], message: str) -> str:
    props = ",".join(f"{k}={escape_property(str(v))}" for k, v in properties.items())
    return f"::{name}{' ' + props if props else ''}::{escape_data(message)}"


def annotation(f: Finding) -> str:
    props: dict[str, str | int] = {}
    if f.span is not None:
        props["file"] = printable(relative_path(f.span.file)[0])
        props["line"] = f.span.line
        props["col"] = f.span.column
        if f.span.end_line >= f.span.line:
            props["endLine"] = f.span.end_line
            if f.span.end_line == f.span.line and f.span.end_column > f.span.column:
                props["endColumn"] = f.span.end_column
    elif f.file:
        props["file"] = printable(relative_path(f.file)[0])
    title = f"planc {f.code}" + (f" {f.kind}" if f.kind != "input" else "")
    if f.plan is not None:
        title += f" (plan {f.plan})"
    props["title"] = title
    message = f.message + (f"\nhint: {f.hint}" if f.hint else "")
    for r in f.related:
        where = f"{printable(relative_path(r.span.file)[0])}:{r.span.line}:{r.span.column}"
        message += f"\nnote: {where}: {r.message}"
    return command(COMMAND[f.level], props, message)


def to_github(result: CheckResult) -> str:
    lines = [annotation(f) for f in findings(result)]
    lines.append(f"planc check: {result.summary()}")
    return "\n".join(lines) + "\n"


def usage_error_github(message: str) -> str:
    return command("error", {"title": "planc usage error"}, message) + "\n"
