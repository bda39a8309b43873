"""Results of checking plans, and their renderings (text for people, JSON for CI).

The JSON layout is a contract (format_version "1"); keys may be added, never changed:
  {"format_version": "1", "plans": [...], "diagnostics": [...]}
  plan: {"file", "name", "status", "devices", "device_classes": [{"id", "ranks", "layers",
         "memory": {weights, activations, kv_cache, buffers, reserve, peak, capacity}}],
         "obligations": [{"kind", "code", "status", "message", "line", "column", "name"}],
         "performance": {"estimate": {...}, "bound": {...}} (step_s, ttft_s, tpot_s,
         latency_s, tokens_per_s: cost/performance), ...}
  diagnostic: {"code", "severity", "message", "file", "line", "column", "hint"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from planc.compiler.ir import PlacementGraph, ranks_of
from planc.compiler.units import plural
from planc.diagnostics import Diagnostic
from planc.verifier.solve import Verdict


@dataclass
class PlanResult:
    file: str
    name: str
    graph: PlacementGraph | None
    verdicts: list[Verdict]
    devices: int
    completed: str | None = None  # the plan text with holes filled, when synthesis ran
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        st = [v.status for v in self.verdicts]
        if "violated" in st:
            return "violated"
        if "unknown" in st:
            return "unknown"
        return "proved"


@dataclass
class CheckResult:
    plans: list[PlanResult] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """The last line of a report: how many plans ended how, and the input errors."""
        counts = {s: sum(1 for p in self.plans if p.status == s)
                  for s in ("proved", "violated", "unknown")}
        errors = sum(1 for d in self.diagnostics if d.severity == "error")
        return (f"{plural(len(self.plans), 'plan')}: {counts['proved']} proved, "
                f"{counts['violated']} violated, {counts['unknown']} unknown; "
                f"{plural(errors, 'input error')}")

    @property
    def exit_code(self) -> int:
        if any(d.severity == "error" for d in self.diagnostics):
            return 1
        if any(p.status == "violated" for p in self.plans):
            return 1
        if any(p.status == "unknown" for p in self.plans):
            return 3
        return 0


def verdict_json(v: Verdict) -> dict[str, Any]:
    ob = v.obligation
    msg = ob.ok if v.status in ("proved", "not_refuted", "conditional") else ob.bad
    if v.status == "unknown":
        msg = f"{ob.name}: z3 could not decide ({v.reason})"
    out: dict[str, Any] = {"kind": ob.kind, "code": ob.code, "name": ob.name,
                           "status": v.status, "message": msg,
                           "line": ob.span.line if ob.span else None,
                           "column": ob.span.column if ob.span else None}
    if v.status == "violated" and ob.hint:
        out["hint"] = ob.hint
    if ob.numbers:
        out["numbers"] = ob.numbers
    return out


def plan_json(p: PlanResult) -> dict[str, Any]:
    classes = []
    if p.graph is not None:
        for c in p.graph.classes:
            classes.append({"id": c.id, "ranks": ranks_of(p.graph.mesh, c),
                            "layers": list(c.layers), "memory": dict(c.memory),
                            "cache_resident": c.cache_resident})
    out: dict[str, Any] = {"file": p.file, "name": p.name, "status": p.status,
                           "devices": p.devices, "device_classes": classes,
                           "obligations": [verdict_json(v) for v in p.verdicts]}
    if p.completed is not None:
        out["completed_plan"] = p.completed
    out.update(p.extra)
    return out


def diagnostic_json(d: Diagnostic) -> dict[str, Any]:
    return {"code": d.code, "severity": d.severity, "message": d.message,
            "file": d.span.file if d.span else None, "line": d.span.line if d.span else None,
            "column": d.span.column if d.span else None, "hint": d.hint,
            "related": [{"file": r.span.file, "line": r.span.line, "column": r.span.column,
                         "message": r.message} for r in d.related]}


def to_json(result: CheckResult) -> str:
    doc = {"format_version": "1", "plans": [plan_json(p) for p in result.plans],
           "diagnostics": [diagnostic_json(d) for d in result.diagnostics]}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
