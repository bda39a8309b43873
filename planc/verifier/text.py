"""The human rendering of a check: per plan a verdict line, the per-device memory table and
every obligation; violated ones in full with the source line, a caret and the fix."""

from __future__ import annotations

from planc.compiler.units import human_bytes
from planc.diagnostics import Diagnostic, render
from planc.render.tables import MEMORY_TABLE, groups, memory_rows
from planc.verifier.report import CheckResult, PlanResult

MARK = {"proved": "ok", "not_refuted": "ok?", "violated": "FAIL", "unknown": "??"}


def table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(r[i])) if i < len(r) else 0 for r in [header, *rows])
              for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [str(c).ljust(w) if i < 3 else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(r, widths))]
        out.append(indent + "  ".join(cells).rstrip())
    return out


def plan_text(p: PlanResult, sources: dict[str, str], verbose: bool = False) -> list[str]:
    ncls = len(p.graph.classes) if p.graph else 0
    out = [f"{p.file}: plan {p.name}: {p.status.upper()} ({p.devices} device{'s' if p.devices != 1 else ''}, "
           f"{ncls} device class{'es' if ncls != 1 else ''})"]
    if p.completed:
        out.append("  completed plan (paste it back):")
        out += ["    " + line for line in p.completed.splitlines()]
    if p.graph is not None:
        rows = memory_rows(p.graph)
        resident = [g[0].cache_resident for g in groups(p.graph)]
        if any(resident):
            rows = [r + [human_bytes(x)] for r, x in zip(rows, resident)]
        out += table(MEMORY_TABLE + (["L2 resident"] if any(resident) else []), rows)
    shown: dict[tuple, list[str]] = {}
    for v in p.verdicts:  # symmetric device classes break the same way: say it once
        ob = v.obligation
        if v.status == "violated":
            key = (ob.code, ob.span, ob.bad.split(":", 1)[-1] if "class" in ob.bad else ob.bad)
            shown.setdefault(key, []).append(str(ob.numbers.get("class", "")))
    for v in p.verdicts:
        ob = v.obligation
        if v.status == "violated":
            key = (ob.code, ob.span, ob.bad.split(":", 1)[-1] if "class" in ob.bad else ob.bad)
            classes = shown.pop(key, None)
            if classes is None:
                continue
            msg = ob.bad
            if len(classes) > 1:
                msg += f" (the same for {len(classes) - 1} more device classes: " \
                       f"{', '.join(classes[1:4])}{', ...' if len(classes) > 4 else ''})"
            d = Diagnostic(ob.code, msg, ob.span, "error", ob.hint, ob.related)
            out += ["  " + line for line in render(d, sources).splitlines()]
        elif v.status == "unknown":
            out.append(f"  ?? {ob.code} {ob.kind}: {ob.name}: z3 could not decide ({v.reason})")
        elif verbose or ob.kind in ("claim", "throughput_bound") or (
                ob.code == "V401" and ob.numbers.get("class") == _worst_class(p)):
            out.append(f"  {MARK[v.status]:>4} {ob.code} {ob.kind}: {ob.ok}")
    if "headroom_text" in p.extra:
        out.append(f"  headroom: {p.extra['headroom_text']}")
    return out


def _worst_class(p: PlanResult) -> str | None:
    if p.graph is None or not p.graph.classes:
        return None
    return max(p.graph.classes, key=lambda c: c.memory["peak"]).id


def to_text(result: CheckResult, verbose: bool = False) -> str:
    out: list[str] = []
    for d in result.diagnostics:
        out.append(render(d, result.sources))
    for p in result.plans:
        out += plan_text(p, result.sources, verbose)
    counts = {s: sum(1 for p in result.plans if p.status == s)
              for s in ("proved", "violated", "unknown")}
    errors = sum(1 for d in result.diagnostics if d.severity == "error")
    out.append(f"{len(result.plans)} plans: {counts['proved']} proved, {counts['violated']} "
               f"violated, {counts['unknown']} unknown; {errors} input errors")
    return "\n".join(out) + "\n"
