"""Report formats for `planc check`: text (people), json (the stable contract), sarif (code
scanning), github (workflow annotations) and junit (test reporters).

`render` turns a `CheckResult` into one of them; `usage_error` gives the document a format
promises even when the command never ran (a bad flag, a planc bug): JSON, SARIF and JUnit stay
parseable, GitHub gets one annotation, text gets nothing (the message goes to stderr).
"""

from __future__ import annotations

import json

from planc.verifier.report import CheckResult

FORMATS = ("text", "json", "sarif", "github", "junit")


def render(result: CheckResult, fmt: str, verbose: bool = False) -> str:
    if fmt == "text":
        from planc.verifier.text import to_text

        return to_text(result, verbose)
    if fmt == "json":
        from planc.verifier.report import to_json

        return to_json(result)
    if fmt == "sarif":
        from planc.output.sarif import to_sarif

        return to_sarif(result)
    if fmt == "github":
        from planc.output.github import to_github

        return to_github(result)
    if fmt == "junit":
        from planc.output.junit import to_junit

        return to_junit(result)
    raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")


def usage_error(fmt: str, message: str, code: str = "U001", exit_code: int = 2,
                hint: str = "see `planc --help`") -> str | None:
    """The document for a run that failed before checking anything; None for text."""
    if fmt == "json":
        doc = {"format_version": "1", "plans": [], "diagnostics": [
            {"code": code, "severity": "error", "message": message, "file": None,
             "line": None, "column": None, "hint": hint, "related": []}]}
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if fmt == "sarif":
        from planc.output.sarif import usage_error_sarif

        return usage_error_sarif(message, code, exit_code)
    if fmt == "github":
        from planc.output.github import usage_error_github

        return usage_error_github(message)
    if fmt == "junit":
        from planc.output.junit import usage_error_junit

        return usage_error_junit(message, code)
    return None
