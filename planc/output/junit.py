"""JUnit XML: one test suite per plan, one test case per obligation, for CI test reporters.

A violated obligation is a `<failure>`, an unknown one an `<error>` (the solver could not
decide: the test did not run to a verdict). Input problems (syntax errors, unknown names) form a
suite per file with one `<error>` test case each; warnings are passing cases with the warning in
`<system-out>`. Test cases carry `file` and `line` attributes, which most reporters link. No
timestamps, so the same input gives the same bytes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from planc.diagnostics import Diagnostic, render
from planc.output.findings import Finding, findings, plan_findings, relative_path
from planc.verifier.report import CheckResult

# Characters XML 1.0 cannot carry at all, even escaped.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: str) -> str:
    return _INVALID_XML.sub("\ufffd", text)


def _case(f: Finding, classname: str, sources: dict[str, str]) -> ET.Element:
    name = f"{f.code} {f.obligation}" if f.obligation else f"{f.code} {f.message}"
    case = ET.Element("testcase", {"classname": _clean(classname), "name": _clean(name),
                                   "time": "0"})
    if f.span is not None:
        case.set("file", _clean(relative_path(f.span.file)[0]))
        case.set("line", str(f.span.line))
    elif f.file:
        case.set("file", _clean(relative_path(f.file)[0]))
    text = f.message + (f"\nhint: {f.hint}" if f.hint else "")
    if f.span is not None:
        text = render(Diagnostic(f.code, f.message, f.span, f.level, f.hint, f.related), sources)
    if f.status == "violated":
        ET.SubElement(case, "failure", {"type": f.code, "message": _clean(f.message)}).text = \
            _clean(text)
    elif f.status in ("unknown", "error"):
        ET.SubElement(case, "error", {"type": f.code, "message": _clean(f.message)}).text = \
            _clean(text)
    elif f.status in ("warning", "note", "not_refuted", "conditional"):
        ET.SubElement(case, "system-out").text = _clean(text)
    return case


def _suite(name: str, cases: Iterable[ET.Element], props: dict[str, str]) -> ET.Element:
    cases = list(cases)
    suite = ET.Element("testsuite", {
        "name": _clean(name), "tests": str(len(cases)),
        "failures": str(sum(1 for c in cases if c.find("failure") is not None)),
        "errors": str(sum(1 for c in cases if c.find("error") is not None)),
        "skipped": "0", "time": "0"})
    if props:
        pe = ET.SubElement(suite, "properties")
        for k, v in props.items():
            ET.SubElement(pe, "property", {"name": k, "value": _clean(v)})
    suite.extend(cases)
    return suite


def _document(suites: list[ET.Element]) -> str:
    root = ET.Element("testsuites", {"name": "planc check"})
    for key in ("tests", "failures", "errors"):
        root.set(key, str(sum(int(s.get(key, "0")) for s in suites)))
    root.set("time", "0")
    root.extend(suites)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def to_junit(result: CheckResult) -> str:
    suites: list[ET.Element] = []
    inputs = findings(CheckResult(diagnostics=result.diagnostics))
    by_file: dict[str, list[Finding]] = {}
    for f in inputs:
        by_file.setdefault(relative_path(f.file)[0] if f.file else "planc", []).append(f)
    for fname, group in by_file.items():
        suites.append(_suite(f"{fname} (input)", (_case(f, fname, result.sources)
                                                  for f in group), {}))
    for p in result.plans:
        fname = relative_path(p.file)[0]
        suites.append(_suite(f"{fname}::{p.name}",
                             (_case(f, f"{fname}::{p.name}", result.sources)
                              for f in plan_findings(p, passing=True)),
                             {"status": p.status, "devices": str(p.devices)}))
    return _document(suites)


def usage_error_junit(message: str, code: str = "U001") -> str:
    case = ET.Element("testcase", {"classname": "planc", "name": f"{code} usage", "time": "0"})
    ET.SubElement(case, "error", {"type": code, "message": _clean(message)}).text = \
        _clean(message)
    return _document([_suite("planc", [case], {})])
