"""Findings: a check result flattened into one list of located problems, for the CI formats.

SARIF, GitHub annotations and JUnit all want the same thing: every input diagnostic and every
obligation verdict with a code, a level, a message, a location relative to the working directory
and a fingerprint that survives edits elsewhere in the file. This module computes those once.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from planc.diagnostics import Related, Span
from planc.verifier.report import CheckResult, PlanResult

Level = Literal["error", "warning", "note"]
# Verdict statuses plus the two a diagnostic can have.
Status = Literal["violated", "unknown", "proved", "not_refuted", "conditional", "error",
                 "warning", "note"]


@dataclass(frozen=True)
class Finding:
    code: str
    level: Level
    status: Status
    message: str
    span: Span | None
    hint: str | None = None
    related: tuple[Related, ...] = ()
    plan: str | None = None  # the plan an obligation belongs to
    file: str | None = None  # the plan's file (also when the obligation has no span)
    obligation: str | None = None  # the obligation's stable short name ("heads % tp")
    kind: str = "input"  # an obligation kind, or "input" for a diagnostic

    @property
    def failed(self) -> bool:
        """Violated and unknown obligations and error diagnostics fail a check."""
        return self.status in ("violated", "unknown", "error")


def findings(result: CheckResult, passing: bool = False) -> list[Finding]:
    """Input diagnostics first, then each plan's verdicts in report order.

    `passing` adds proved, not-refuted and conditional obligations (JUnit lists every test case).
    """
    out = [Finding(d.code, d.severity, d.severity, d.message, d.span, d.hint, d.related,
                   file=d.span.file if d.span else None) for d in result.diagnostics]
    for p in result.plans:
        out += plan_findings(p, passing)
    return out


def plan_findings(p: PlanResult, passing: bool = False) -> list[Finding]:
    out = []
    for v in p.verdicts:
        ob = v.obligation
        if v.status in ("proved", "not_refuted", "conditional") and not passing:
            continue
        if v.status == "unknown":
            msg = f"{ob.name}: z3 could not decide ({v.reason})"
            hint: str | None = "raise --timeout-ms or --rlimit; unknown is never a pass"
        elif v.status == "violated":
            msg, hint = ob.bad, ob.hint
        else:
            msg, hint = ob.ok, None
        level: Level = "error" if v.status in ("violated", "unknown") else "note"
        out.append(Finding(ob.code, level, v.status, msg, ob.span, hint, ob.related,
                           plan=p.name, file=ob.span.file if ob.span else p.file,
                           obligation=ob.name, kind=ob.kind))
    return out


# ---------------------------------------------------------------------------------------------
# Paths: relative to the working directory, as CI tools resolve them against the checkout.


def relative_path(path: str, cwd: str | Path | None = None) -> tuple[str, bool]:
    """(posix path, True) relative to cwd when the file lies below it; else (absolute, False)."""
    base = os.path.abspath(cwd if cwd is not None else os.getcwd())
    full = os.path.abspath(os.path.join(base, path))
    rel = os.path.relpath(full, base)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return Path(full).as_posix(), False
    return Path(rel).as_posix(), True


def fingerprint(f: Finding, sources: dict[str, str], cwd: str | Path | None = None) -> str:
    """A hash that ignores line numbers and numbers in messages, so it survives unrelated edits.

    Obligations are keyed by their stable name; diagnostics by their message with digits
    blanked and the text of the line they point at.
    """
    path = relative_path(f.file, cwd)[0] if f.file else ""
    if f.obligation is not None:
        key = ["obligation", f.code, path, f.plan or "", f.obligation]
    else:
        line = ""
        if f.span is not None and f.span.file in sources:
            lines = sources[f.span.file].splitlines()
            if 1 <= f.span.line <= len(lines):
                line = " ".join(lines[f.span.line - 1].split())
        key = ["diagnostic", f.code, path, re.sub(r"\d+", "#", f.message), line]
    return hashlib.sha256("\0".join(key).encode("utf-8")).hexdigest()[:32]

