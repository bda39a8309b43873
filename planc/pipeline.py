"""The stages of planc run in order, each one inspectable from the CLI.

  parse -> resolve -> check_structure -> lower -> verify
Nothing here imports torch. User errors become diagnostics; nothing raises to the caller except
`InternalError` (a planc bug) and `PlancError` for unreadable input when asked for one file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from planc.compiler.check_structure import check_structure
from planc.compiler.lower import lower
from planc.compiler.resolve import resolve
from planc.compiler.spec import PlanSpec, SpecFile
from planc.diagnostics import Diagnostic, Diagnostics, PlancError
from planc.grammar.parse import parse_file
from planc.verifier import encode
from planc.verifier.report import CheckResult, PlanResult
from planc.verifier.solve import SolverConfig, decide

# The passes between the AST and the placement graph, in order, with why each runs there.
PASSES = (
    ("resolve", "bind names, normalise units, fill presets: later passes see integers only"),
    ("check_structure", "reject plans with no runtime meaning before doing arithmetic on them"),
    ("lower", "build the placement graph: what every device holds, allocates and sends"),
    ("verify", "prove each obligation with z3, or show the numbers that break it"),
)


def plan_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and every *.plan below directories named, sorted, without duplicates."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(x for x in p.rglob("*.plan") if x.is_file()))
        else:
            out.append(p)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def load(path: str | Path, diags: Diagnostics) -> tuple[SpecFile | None, str | None]:
    try:
        tree, text = parse_file(path)
    except PlancError as e:
        diags.add(e.diagnostic)
        try:  # the text, when readable, lets the report show the line under the caret
            from planc.grammar.parse import read_source

            return None, read_source(path)
        except PlancError:
            return None, None
    return resolve(tree, diags), text


def check_plan(plan: PlanSpec, diags: Diagnostics, solver: SolverConfig | None = None
               ) -> PlanResult | None:
    if plan.has_holes:
        from planc.verifier.synthesis import completed_text, synthesize

        found = synthesize(plan, diags, solver)
        if found is None:
            return None
        best, search = found
        result = check_plan(best, diags, solver or SolverConfig())
        if result is not None:
            result.completed = completed_text(plan, best)
            result.extra["synthesis"] = search
        return result
    local = Diagnostics()
    if not check_structure(plan, local):
        diags.extend(local.items)
        return None
    diags.extend(local.items)
    graph = lower(plan)
    obligations = encode.build(plan, graph)
    verdicts = decide(obligations, encode.variables(plan), solver)
    result = PlanResult(plan.file, plan.name, graph, verdicts, plan.devices)
    if result.status == "proved":
        from planc.verifier.headroom import decode_headroom_text, headroom, headroom_text

        h = headroom(plan)
        result.extra["headroom"] = h
        result.extra["headroom_text"] = (decode_headroom_text(h) if plan.workload.phase ==
                                         "decode" else headroom_text(h))
    if plan.devices < plan.cluster.count:
        diags.warning("W101", f"plan {plan.name!r} uses {plan.devices} of "
                      f"{plan.cluster.count} devices; {plan.cluster.count - plan.devices} stay "
                      "idle", plan.mesh_span, "grow the mesh or use a smaller cluster")
    return result


def check_paths(paths: Iterable[str | Path], plan_name: str | None = None,
                solver: SolverConfig | None = None) -> CheckResult:
    result = CheckResult()
    files = plan_files(paths)
    if not files:
        result.diagnostics.append(Diagnostic("P005", "no .plan files found", None, "error",
                                             "give .plan files or directories holding them"))
    for f in files:
        diags = Diagnostics()
        spec, text = load(f, diags)
        if text is not None:
            result.sources[str(f)] = text
        if spec is not None:
            plans = [p for p in spec.plans if plan_name is None or p.name == plan_name]
            if plan_name is not None and not plans and not diags.has_errors:
                from planc.diagnostics import did_you_mean

                names = [p.name for p in spec.plans]
                guess = did_you_mean(plan_name, names)
                diags.error("E004", f"no plan named {plan_name!r} in {f}", None,
                            f"did you mean {guess!r}?" if guess else
                            f"plans here: {', '.join(names) or 'none'}")
            for p in plans:
                r = check_plan(p, diags, solver)
                if r is not None:
                    result.plans.append(r)
        result.diagnostics.extend(diags.sorted())
    return result


def find_plan(path: str | Path, name: str | None, diags: Diagnostics
              ) -> tuple[PlanSpec | None, str | None]:
    """The one plan a command works on (`--plan NAME`, or the file's only plan)."""
    spec, text = load(path, diags)
    if spec is None or diags.has_errors:
        return None, text
    if name is None:
        if len(spec.plans) == 1:
            return spec.plans[0], text
        diags.error("E004", f"{path} has {len(spec.plans)} plans; choose one with --plan",
                    None, f"plans: {', '.join(p.name for p in spec.plans) or 'none'}")
        return None, text
    for p in spec.plans:
        if p.name == name:
            return p, text
    from planc.diagnostics import did_you_mean

    guess = did_you_mean(name, [p.name for p in spec.plans])
    diags.error("E004", f"no plan named {name!r} in {path}", None,
                f"did you mean {guess!r}?" if guess else
                f"plans: {', '.join(p.name for p in spec.plans) or 'none'}")
    return None, text
