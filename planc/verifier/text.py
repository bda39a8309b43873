"""The human rendering of a check: per plan a verdict line, the per-device memory table and
every obligation; violated ones in full with the source line, a caret and the fix."""

from __future__ import annotations

from planc.compiler.units import human_bytes, plural
from planc.cost.performance import summary_text
from planc.diagnostics import Diagnostic, printable, render
from planc.render.tables import MEMORY_TABLE, groups, memory_rows
from planc.verifier.obligations import CLAIM_KINDS
from planc.verifier.report import CheckResult, PlanResult

MARK = {"proved": "ok", "not_refuted": "ok?", "conditional": "if", "violated": "FAIL",
        "unknown": "??"}


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
    out = [(f"{printable(p.file)}: plan {p.name}: {p.status.upper()} "
            f"({p.devices} device{'s' if p.devices != 1 else ''}, "
            f"{ncls} device class{'es' if ncls != 1 else ''})")]
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
                more = plural(len(classes) - 1, "more device class", "more device classes")
                msg += f" (the same for {more}: " \
                       f"{', '.join(classes[1:4])}{', ...' if len(classes) > 4 else ''})"
            d = Diagnostic(ob.code, msg, ob.span, "error", ob.hint, ob.related)
            out += ["  " + line for line in render(d, sources).splitlines()]
        elif v.status == "unknown":
            out.append(f"  ?? {ob.code} {ob.kind}: {ob.name}: z3 could not decide ({v.reason})")
        elif verbose or ob.kind in CLAIM_KINDS or (
                ob.code == "V401" and ob.numbers.get("class") == _worst_class(p)):
            out.append(f"  {MARK[v.status]:>4} {ob.code} {ob.kind}: {ob.ok}")
    if "performance" in p.extra and p.graph is not None:
        out.append(f"  estimated: {summary_text(p.extra['performance'], p.graph.phase)}")
    syn = p.extra.get("synthesis")
    if syn and syn.get("alternatives") and p.graph is not None:
        out.append(f"  next best under `{syn['objective']}` (estimated):")
        for alt in syn["alternatives"]:
            values = ", ".join(f"{k.removeprefix('mesh.')}={v}" for k, v in alt["values"].items())
            out.append(f"    {values}: "
                       f"{summary_text({'estimate': alt['estimate']}, p.graph.phase)}")
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
    out.append(result.summary())
    return "\n".join(out) + "\n"
