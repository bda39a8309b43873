"""The stages of planc run in order, each one inspectable from the CLI.

  parse -> resolve -> check_structure -> lower -> verify
Nothing here imports torch. User errors become diagnostics; nothing raises to the caller except
`InternalError` (a planc bug) and `PlancError` for unreadable input when asked for one file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path

from planc.compiler.check_structure import check_structure
from planc.compiler.ir import PlacementGraph
from planc.compiler.lower import lower
from planc.compiler.resolve import resolve
from planc.compiler.spec import PlanSpec, SpecFile
from planc.diagnostics import Diagnostic, Diagnostics, PlancError, Span, printable
from planc.grammar.parse import parse_file
from planc.verifier import encode
from planc.verifier.obligations import Obligation
from planc.verifier.report import CheckResult, PlanResult
from planc.verifier.solve import SolverConfig, Verdict, decide

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


@dataclass(frozen=True)
class _Solved:
    plan: PlanSpec
    graph: PlacementGraph
    verdicts: list[Verdict]
    headroom: dict[str, dict[str, int]] | None


# Solving is most of a check (z3 per obligation, a headroom search of ~100 lowerings); files of
# many plans repeat the same plan under other names, and those share the work (a file of 1,846
# such plans took 78 s).
Memo = dict[tuple[PlanSpec, int, int], _Solved]


def moved_verdicts(verdicts: list[Verdict], old: PlanSpec, new: PlanSpec
                   ) -> list[Verdict] | None:
    """An equal plan's verdicts, pointing at the new plan's lines; None when the two plans'
    lines do not pair up (a value written in one and defaulted in the other)."""
    where: dict[Span, Span] = {}
    if not _pair_spans(old, new, where):
        return None

    def move(ob: Obligation) -> Obligation:
        related = tuple(r if r.span not in where else replace(r, span=where[r.span])
                        for r in ob.related)
        if ob.span not in where and related == ob.related:
            return ob
        span = ob.span if ob.span is None else where.get(ob.span, ob.span)
        return replace(ob, span=span, related=related)

    return [replace(v, obligation=move(v.obligation)) for v in verdicts]


def _pair_spans(a: object, b: object, out: dict[Span, Span]) -> bool:
    """Spans at the same place in two equal specs (spans are left out of their equality);
    False when a span of one has no counterpart in the other."""
    if a is b:  # the same model, cluster or workload block: its spans stay where they are
        return True
    if isinstance(a, Span) and isinstance(b, Span):
        out[a] = b
        return True
    if isinstance(a, Span) or isinstance(b, Span):
        return False  # one written, the other not
    if is_dataclass(a) and is_dataclass(b):
        return all(_pair_spans(getattr(a, f.name), getattr(b, f.name), out) for f in fields(a))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_pair_spans(x, y, out) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_pair_spans(a[k], b[k], out) for k in a)
    return True


def check_plan(plan: PlanSpec, diags: Diagnostics, solver: SolverConfig | None = None,
               memo: Memo | None = None) -> PlanResult | None:
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
    cfg = solver or SolverConfig()
    # spans are not part of a spec's equality: the key is the plan less its name
    key = (replace(plan, name=""), cfg.timeout_ms, cfg.rlimit)
    hit = memo.get(key) if memo is not None else None
    moved = moved_verdicts(hit.verdicts, hit.plan, plan) if hit is not None else None
    if hit is None or moved is None:
        hit = None
        graph = lower(plan)
        verdicts = decide(encode.build(plan, graph), encode.variables(plan), cfg)
    else:
        graph = hit.graph.model_copy(update={"plan": plan.name})
        verdicts = moved
    result = PlanResult(plan.file, plan.name, graph, verdicts, plan.devices)
    h = hit.headroom if hit is not None else None
    from planc.cost.performance import summary
    from planc.cost.time import rates_of

    result.extra["performance"] = summary(graph, rates_of(plan))
    if result.status == "proved":
        from planc.verifier.headroom import decode_headroom_text, headroom, headroom_text

        h = h or headroom(plan)
        result.extra["headroom"] = h
        result.extra["headroom_text"] = (decode_headroom_text(h) if plan.workload.phase ==
                                         "decode" else headroom_text(h))
    if memo is not None and key not in memo:
        memo[key] = _Solved(plan, graph, verdicts, h)
    from planc.verifier.advice import cross_node_groups

    cross_node_groups(plan, graph, diags)
    if plan.devices < plan.cluster.count:
        diags.warning("W101", f"plan {plan.name!r} uses {plan.devices} of "
                      f"{plan.cluster.count} devices; {plan.cluster.count - plan.devices} stay "
                      "idle", plan.mesh_span, "grow the mesh or use a smaller cluster")
    return result


def check_paths(paths: Iterable[str | Path], plan_name: str | None = None,
                solver: SolverConfig | None = None) -> CheckResult:
    result = CheckResult()
    memo: Memo = {}
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
            result.sources.update(spec.sources)
            plans = [p for p in spec.plans if plan_name is None or p.name == plan_name]
            if plan_name is not None and not plans and not diags.has_errors:
                from planc.diagnostics import did_you_mean

                names = [p.name for p in spec.plans]
                guess = did_you_mean(plan_name, names)
                diags.error("E004", f"no plan named {plan_name!r} in {printable(str(f))}", None,
                            f"did you mean {guess!r}?" if guess else
                            f"plans here: {', '.join(names) or 'none'}")
            for p in plans:
                r = check_plan(p, diags, solver, memo)
                if r is not None:
                    result.plans.append(r)
        result.diagnostics.extend(diags.sorted())
    return result


def find_plan(path: str | Path, name: str | None, diags: Diagnostics,
              sources: dict[str, str] | None = None) -> tuple[PlanSpec | None, str | None]:
    """The one plan a command works on (`--plan NAME`, or the file's only plan); the texts of
    other files read on the way (a `from hf` config.json) go into `sources`."""
    spec, text = load(path, diags)
    if spec is not None and sources is not None:
        sources.update(spec.sources)
    if spec is None or diags.has_errors:
        return None, text
    if name is None:
        if len(spec.plans) == 1:
            return spec.plans[0], text
        diags.error("E004", f"{printable(str(path))} has {len(spec.plans)} plans; choose one "
                    "with --plan",
                    None, f"plans: {', '.join(p.name for p in spec.plans) or 'none'}")
        return None, text
    for p in spec.plans:
        if p.name == name:
            return p, text
    from planc.diagnostics import did_you_mean

    guess = did_you_mean(name, [p.name for p in spec.plans])
    diags.error("E004", f"no plan named {name!r} in {printable(str(path))}", None,
                f"did you mean {guess!r}?" if guess else
                f"plans: {', '.join(p.name for p in spec.plans) or 'none'}")
    return None, text
