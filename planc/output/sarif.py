"""SARIF 2.1.0: the check result for code-scanning tools (GitHub code scanning and others).

One run, tool `planc`; rule ids are the diagnostic and obligation codes (stable across
releases); locations are relative to the working directory under the `%SRCROOT%` base id (files
outside it get absolute `file:` URIs); `partialFingerprints` ignore line numbers so an alert
stays the same alert when lines move. Columns count Unicode code points, as lark does.
Usage errors still produce a valid log: the run has no results and the invocation says why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from planc import __version__
from planc.diagnostics import Span
from planc.output.findings import Finding, findings, fingerprint, relative_path
from planc.output.rules import rule
from planc.verifier.report import CheckResult

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "%SRCROOT%"
FINGERPRINT_KEY = "plancFingerprint/v1"


def _artifact(path: str, cwd: str | Path | None) -> dict[str, Any]:
    shown, relative = relative_path(path, cwd)
    if relative:
        return {"uri": quote(shown, safe="/"), "uriBaseId": SRCROOT}
    return {"uri": Path(shown).as_uri()}


def _region(span: Span) -> dict[str, int]:
    region = {"startLine": span.line, "startColumn": span.column}
    if (span.end_line, span.end_column) > (span.line, span.column):
        region["endLine"] = span.end_line
        region["endColumn"] = span.end_column
    return region


def _location(span: Span, cwd: str | Path | None, message: str | None = None,
              ident: int | None = None) -> dict[str, Any]:
    loc: dict[str, Any] = {"physicalLocation": {"artifactLocation": _artifact(span.file, cwd),
                                                "region": _region(span)}}
    if ident is not None:
        loc["id"] = ident
    if message:
        loc["message"] = {"text": message}
    return loc


def _result(f: Finding, index: dict[str, int], sources: dict[str, str],
            cwd: str | Path | None) -> dict[str, Any]:
    text = f.message
    if f.plan is not None:
        text = f"plan {f.plan}: {text}"
    if f.hint:
        text += f"\nhint: {f.hint}"
    res: dict[str, Any] = {"ruleId": f.code, "ruleIndex": index[f.code], "kind": "fail",
                           "level": f.level, "message": {"text": text}}
    if f.span is not None:
        res["locations"] = [_location(f.span, cwd)]
    elif f.file:
        res["locations"] = [{"physicalLocation": {"artifactLocation": _artifact(f.file, cwd)}}]
    if f.related:
        res["relatedLocations"] = [_location(r.span, cwd, r.message, i)
                                   for i, r in enumerate(f.related, start=1)]
    res["partialFingerprints"] = {FINGERPRINT_KEY: fingerprint(f, sources, cwd)}
    props: dict[str, Any] = {"status": f.status, "kind": f.kind}
    if f.plan is not None:
        props["plan"] = f.plan
    if f.obligation is not None:
        props["obligation"] = f.obligation
    res["properties"] = props
    return res


def _rules(codes: list[str]) -> list[dict[str, Any]]:
    out = []
    for code in codes:
        name, text = rule(code)
        level = "warning" if code.startswith("W") else "error"
        out.append({"id": code, "name": name, "shortDescription": {"text": text},
                    "help": {"text": f"{text} See docs/diagnostics.md#{code.lower()} for an "
                                     "example and the fix."},
                    "defaultConfiguration": {"level": level}})
    return out


def _log(results: list[dict[str, Any]], codes: list[str], invocation: dict[str, Any],
         cwd: str | Path | None) -> dict[str, Any]:
    root = Path(os.path.abspath(cwd if cwd is not None else os.getcwd())).as_uri().rstrip("/")
    run = {
        "tool": {"driver": {"name": "planc", "version": __version__,
                            "semanticVersion": __version__, "rules": _rules(codes)}},
        "originalUriBaseIds": {SRCROOT: {"uri": root + "/"}},
        "columnKind": "unicodeCodePoints",
        "invocations": [invocation],
        "results": results,
    }
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}


def to_sarif(result: CheckResult, cwd: str | Path | None = None) -> str:
    found = findings(result)
    codes = sorted({f.code for f in found})
    index = {c: i for i, c in enumerate(codes)}
    results = [_result(f, index, result.sources, cwd) for f in found]
    invocation = {"executionSuccessful": True, "exitCode": result.exit_code}
    return json.dumps(_log(results, codes, invocation, cwd), indent=2, sort_keys=True) + "\n"


def usage_error_sarif(message: str, code: str = "U001", exit_code: int = 2,
                      cwd: str | Path | None = None) -> str:
    """A valid log for a run that never got to check anything (bad flags, a planc bug)."""
    invocation = {"executionSuccessful": False, "exitCode": exit_code,
                  "toolExecutionNotifications": [{
                      "descriptor": {"id": code}, "level": "error",
                      "message": {"text": message}}]}
    return json.dumps(_log([], [], invocation, cwd), indent=2, sort_keys=True) + "\n"
