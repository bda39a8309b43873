"""Synthesis: fill a plan's holes (`?`) with values that satisfy every obligation.

  1. z3 enumerates the assignments of the mesh / microbatch holes that satisfy the structural
     constraints (device count, divisibility, RoPE pairing, stage count), each asserted with a
     tracking literal so that an infeasible plan gets an unsat core: the conflicting lines.
  2. Each candidate is lowered and screened with the obligations' plain-Python predicates
     (memory, cache, claims); batch or seq holes are maximised there by binary search, since
     memory grows with both.
  3. The best candidate under the objective (`minimize time|memory|devices`,
     `maximize batch|seq`; default: minimize time) is verified in full with z3 and printed as
     a completed plan to paste back.
With no feasible candidate the report says which lines conflict and the nearest feasible
change: the smallest device count that works, or the largest batch that fits.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Sequence
from dataclasses import dataclass, replace
from math import prod

import z3

from planc.compiler.check_structure import check_structure
from planc.compiler.lower import lower, memory_by_class
from planc.compiler.spec import PlanSpec
from planc.compiler.splits import seq_chunk_step
from planc.cost.performance import objective_value, summary
from planc.cost.time import rates_of
from planc.diagnostics import Diagnostics, Related, Span
from planc.layout.slices import pieces_per_part, slice_kind
from planc.verifier import encode
from planc.verifier.solve import SolverConfig

MAX_CANDIDATES = 20_000
ALTERNATIVES = 3  # runners-up shown beside a completed plan
BATCH_LIMIT = 2**20
SEQ_LIMIT = 2**24


def _mesh_holes(plan: PlanSpec) -> list[str]:
    return [a for a, s in plan.mesh if s is None]


def _domain(plan: PlanSpec, axis: str, count: int) -> list[int]:
    """Sizes an open axis can take: at most the device count and, since a product of axes
    divides a dimension only if each factor does, a divisor of every dimension split over it.
    A finite domain keeps z3's enumeration linear-time per model."""
    m, w = plan.model, plan.workload
    sizes = {"heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim, "ffn": m.ffn,
             "experts": m.experts, "batch": w.batch, "seq": w.seq}
    lay = plan.shard_of("layers")
    if lay is None or not lay.stages:
        sizes["layers"] = m.layers
    out = []
    for d in range(1, count + 1):
        ok = True
        for sh in plan.shards:
            if axis not in sh.axes:
                continue
            for dim in sh.dims + (("kv_heads",) if "heads" in sh.dims and "kv_heads" not in
                                  sh.dims and not plan.shard_of("kv_heads") else ()):
                size = sizes.get(dim)
                k = 2 if dim == "head_dim" or (dim == "seq" and sh.attention in ("ring", "gather")) else 1
                if size is not None and size % (d * k if dim == "head_dim" else d) != 0:
                    ok = False
        if ok:
            out.append(d)
    return out


def _structural(plan: PlanSpec, ctx: z3.Context, count: int):  # type: ignore[no-untyped-def]
    """z3 vars for mesh/microbatch holes and tracked constraints: [(label, expr, span, text)]."""
    v = {a: (z3.Int(f"mesh.{a}", ctx) if s is None else z3.IntVal(s, ctx)) for a, s in plan.mesh}
    lay = plan.shard_of("layers")
    mb_hole = lay is not None and lay.microbatches is None
    mb = z3.Int("microbatches", ctx) if mb_hole else z3.IntVal(
        lay.microbatches if lay is not None and lay.microbatches else 1, ctx)
    one = z3.IntVal(1, ctx)

    def deg(dim: str):  # type: ignore[no-untyped-def]
        axes = plan.axes_of(dim) or (plan.axes_of("heads") if dim == "kv_heads" else ())
        return prod([v[a] for a in axes], start=one) if axes else one

    cons: list[tuple[str, z3.BoolRef, Span | None, str]] = []
    devices = prod([v[a] for a, _ in plan.mesh], start=one)
    cons.append(("devices", devices <= count, plan.mesh_span,
                 f"the mesh must fit the cluster's {count} devices"))
    for a, s in plan.mesh:
        if s is None:
            dom = _domain(plan, a, count)
            cons.append((f"domain.{a}", z3.Or([v[a] == d for d in dom]) if dom else
                         z3.BoolVal(False, ctx), plan.axis_spans.get(a),
                         (f"axis {a} must divide every dimension split over it (candidates: "
                          f"{', '.join(map(str, dom[:8]))}{', ...' if len(dom) > 8 else ''})")))
    m, w = plan.model, plan.workload
    sizes = {"heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim, "ffn": m.ffn,
             "experts": m.experts, "layers": m.layers}
    for dim, size in sizes.items():
        if dim == "layers" and lay is not None and lay.stages:
            cons.append(("stages", deg("layers") == len(lay.stages), lay.stages_span,
                         f"{len(lay.stages)} explicit stages need a pipeline axis of that size"))
            continue
        if (plan.axes_of(dim) or (dim == "kv_heads" and plan.axes_of("heads"))) and size:
            sh = plan.shard_of(dim) or plan.shard_of("heads")
            cons.append((f"div.{dim}", size % deg(dim) == 0, sh.span if sh else None,
                         f"{dim} ({size}) divisible by its split"))
    hd = plan.shard_of("head_dim")
    if hd is not None:
        pairs = pieces_per_part(slice_kind("head_dim"))
        cons.append(("rope", m.head_dim % (pairs * deg("head_dim")) == 0, hd.span,
                     "head_dim divisible by twice its split (RoPE pairs)"))
    if w.batch is not None:
        cons.append(("div.batch", w.batch % deg("batch") == 0, plan.workload.spans.get("batch"),
                     f"batch ({w.batch}) divisible by its split"))
        if lay is not None and not mb_hole:
            cons.append(("microbatches", z3.And(mb >= 1, (w.batch / deg("batch")) % mb == 0),
                         lay.microbatches_span or lay.span,
                         "microbatches divide the local batch"))
    seq_sh = plan.shard_of("seq")
    if w.seq is not None and seq_sh is not None:
        k = pieces_per_part(slice_kind("seq", seq_sh.attention))  # zig-zag: 2 chunks a part
        cons.append(("div.seq", w.seq % (k * deg("seq")) == 0, seq_sh.span,
                     f"seq ({w.seq}) divisible by {'2 x ' if k == 2 else ''}its split"))
    # microbatches are not enumerated by z3: given the mesh they range over the divisors of
    # the local batch, which Python lists directly (see _microbatch_options)
    hole_vars = [v[a] for a in _mesh_holes(plan)]
    return hole_vars, cons


def _enumerate(plan: PlanSpec, count: int, solver: SolverConfig
               ) -> tuple[list[dict[str, int]], list[tuple[str, Span | None, str]]]:
    """All structural assignments of the holes, or ([], unsat core) when there is none."""
    ctx = z3.Context()
    hole_vars, cons = _structural(plan, ctx, count)
    s = z3.Solver(ctx=ctx)
    s.set("timeout", solver.timeout_ms)
    s.set("random_seed", 0)
    tracks = {}
    for label, expr, span, text in cons:
        lit = z3.Bool(label, ctx)
        tracks[label] = (span, text)
        s.assert_and_track(expr, lit)
    out: list[dict[str, int]] = []
    while len(out) < MAX_CANDIDATES:
        r = s.check()
        if r != z3.sat:
            if not out and r == z3.unsat:
                core = [str(c) for c in s.unsat_core()]
                return [], [(c, *tracks[c]) for c in sorted(core)]
            break
        model = s.model()
        values = {str(x): model.eval(x, model_completion=True).as_long() for x in hole_vars}
        out.append(values)
        if not hole_vars:
            break
        s.add(z3.Or([x != values[str(x)] for x in hole_vars]))
    return out, []


def _microbatch_options(plan: PlanSpec) -> Sequence[int | None]:
    """Microbatch counts to try for a concrete mesh: the divisors of the local batch (powers
    of two up to 64 while the batch itself is open); [None] when microbatches are not a hole."""
    lay = plan.shard_of("layers")
    if lay is None or lay.microbatches is not None:
        return [None]
    if plan.workload.batch is None:
        return [1, 2, 4, 8, 16, 32, 64]
    local = plan.workload.batch // max(1, plan.degree("batch"))
    return encode._divisors(local) if local else [1]


def _concrete(plan: PlanSpec, values: dict[str, int]) -> PlanSpec:
    mesh = tuple((a, s if s is not None else values[f"mesh.{a}"]) for a, s in plan.mesh)
    shards = tuple(replace(sh, microbatches=values["microbatches"])
                   if "layers" in sh.dims and sh.microbatches is None and "microbatches" in values
                   else sh for sh in plan.shards)
    return replace(plan, mesh=mesh, shards=shards)


def _memory_fits(plan: PlanSpec) -> bool:
    """HBM capacity and `require memory` per class, from the memory rows alone (no graph)."""
    return all(encode.memory_fits(plan, m["peak"], m["capacity"])
               for m in memory_by_class(plan).values())


def _screen(plan: PlanSpec) -> tuple[bool, object]:
    """Every non-quantified obligation's Python predicate holds (cheap; z3 verifies the pick)."""
    d = Diagnostics()
    if not check_structure(plan, d):
        return False, None
    if not _memory_fits(plan):
        return False, None
    g = lower(plan)
    values = encode.variables(plan)
    for ob in encode.build(plan, g, hints=False):
        if ob.code in HOLE_FREE:
            continue
        if not ob.quantified and not ob.check(values):
            return False, g
    return True, g


# Obligations no value of a hole can change (claims that contradict each other): screening
# with them would reject every candidate and blame memory; the chosen plan reports them.
HOLE_FREE = ("V610",)


def _with_workload(plan: PlanSpec, batch: int | None = None, seq: int | None = None) -> PlanSpec:
    w = plan.workload
    return replace(plan, workload=replace(w, batch=batch if batch is not None else w.batch,
                                          seq=seq if seq is not None else w.seq))


def _maximise(plan: PlanSpec, field: str, step: int, limit: int) -> tuple[PlanSpec, object] | None:
    """The plan with the largest multiple of step for batch/seq that passes the screen."""

    def at(k: int) -> PlanSpec:
        return _with_workload(plan, **{field: k * step})

    if not _screen(at(1))[0]:
        return None
    lo, hi = 1, 2
    while hi * step <= limit and _screen(at(hi))[0]:
        lo, hi = hi, hi * 2
    hi = min(hi, limit // step + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _screen(at(mid))[0]:
            lo = mid
        else:
            hi = mid
    best = at(lo)
    return best, _screen(best)[1]


def _fill_workload(plan: PlanSpec) -> tuple[PlanSpec, object] | None:
    w = plan.workload
    if w.batch is None:
        lay = plan.shard_of("layers")  # _concrete filled its microbatches: never None here
        step = plan.degree("batch") * ((lay.microbatches or 1) if lay else 1)
        seq_default = w.seq if w.seq is not None else plan.degree("seq") * 2
        got = _maximise(_with_workload(plan, seq=seq_default), "batch", step, BATCH_LIMIT)
        if got is None:
            return None
        plan = got[0]
        if w.seq is not None:
            return got
        plan = _with_workload(plan, seq=None)
    if plan.workload.seq is None:
        step = seq_chunk_step(plan)
        return _maximise(plan, "seq", step, SEQ_LIMIT)
    ok, g = _screen(plan)
    return (plan, g) if ok else None


def _score(plan: PlanSpec, graph, objective: tuple[str, str]) -> tuple:  # type: ignore[no-untyped-def]
    rates = rates_of(plan)
    t = objective_value(graph, rates, "time")
    peak = max(c.memory["peak"] for c in graph.classes)
    target = objective[1]
    key = {"memory": peak, "devices": plan.devices, "batch": -(plan.workload.batch or 0),
           "seq": -(plan.workload.seq or 0)}.get(target)
    if key is None:
        key = objective_value(graph, rates, target)
    return (key, t, peak, tuple(s for _, s in plan.mesh))


class OutOfBudget(Exception):
    """A hint's search spent its budget before it could conclude."""


@dataclass
class Budget:
    """How many candidates a hint may screen: a count, not wall-clock time, so the same plan
    gets the same hint on an idle and on a loaded machine."""

    left: int

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise OutOfBudget


def ranked(plan: PlanSpec, solver: SolverConfig, count: int | None = None,
           budget: Budget | None = None, keep: int = 1):  # type: ignore[no-untyped-def]
    """([(score, concrete plan, graph)] of the `keep` best, best first; candidates tried; unsat
    core). Raises OutOfBudget when a budget is given and spent. Only `keep` graphs are held:
    thousands of candidates must not hold thousands of graphs."""
    objective = plan.objective or ("minimize", "time")
    cands, core = _enumerate(plan, count or plan.cluster.count, solver)
    out: list = []  # type: ignore[type-arg]
    tried = 0
    for values in cands:
        mesh_plan = _concrete(plan, values)
        for mbs in _microbatch_options(mesh_plan):
            if budget is not None:
                budget.spend()
            tried += 1
            cp = _concrete(mesh_plan, {"microbatches": mbs}) if mbs is not None else mesh_plan
            got = _fill_workload(cp)
            if got is None:
                continue
            cp, g = got
            # the candidate's index breaks ties so plans themselves are never compared
            insort(out, (_score(cp, g, objective), tried, cp, g), key=lambda x: x[:2])
            del out[keep:]
    return [(sc, cp, g) for sc, _, cp, g in out], tried, core


def search(plan: PlanSpec, solver: SolverConfig, count: int | None = None,
           budget: Budget | None = None):  # type: ignore[no-untyped-def]
    """(best concrete plan, candidates tried, unsat core)."""
    found, tried, core = ranked(plan, solver, count, budget)
    return (found[0][1] if found else None), tried, core


def completed_text(plan: PlanSpec, final: PlanSpec) -> str:
    """The plan (and its workload when it had holes) with every `?` replaced by its value."""
    from planc.grammar import ast
    from planc.grammar.parse import parse_file

    tree, text = parse_file(plan.file)
    lines = text.split("\n")
    subs: dict[tuple[int, int], str] = {}
    final_lay = final.shard_of("layers")
    mb = final_lay.microbatches if final_lay else None
    for b in tree.blocks:
        if b.kind == "plan" and b.name.name == plan.name:
            for st in b.body:
                if isinstance(st, ast.Mesh):
                    for ax in st.axes:
                        if isinstance(ax.size, ast.Hole):
                            subs[(ax.size.span.line, ax.size.span.column)] = str(
                                final.axis_size(ax.name.name))
                elif isinstance(st, ast.Shard):
                    for o in st.options:
                        if isinstance(o, ast.Microbatches) and isinstance(o.count, ast.Hole):
                            subs[(o.count.span.line, o.count.span.column)] = str(mb)
        if b.kind == "workload" and b.name.name == plan.workload.name:
            for st in b.body:
                if isinstance(st, ast.Prop) and isinstance(st.value, ast.Hole):
                    val = getattr(final.workload, st.key.name, None)
                    subs[(st.value.span.line, st.value.span.column)] = str(val)
    out = []
    for b in tree.blocks:
        keep = (b.kind == "plan" and b.name.name == plan.name) or (
            b.kind == "workload" and b.name.name == plan.workload.name and plan.workload.batch
            is None or b.kind == "workload" and b.name.name == plan.workload.name
            and plan.workload.seq is None)
        if not keep:
            continue
        for ln in range(b.span.line, b.span.end_line + 1):
            line = lines[ln - 1]
            for (sl, sc), val in sorted(subs.items(), reverse=True):
                if sl == ln:
                    line = line[: sc - 1] + val + line[sc:]
            out.append(line)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# Candidates each hint may screen (a step budget: hints must not depend on machine load).
# About a second on one core of a loaded machine for a 16-device cluster.
NEAREST_DEVICES_BUDGET = 400
LARGEST_BATCH_BUDGET = 64


def _nearest_devices(plan: PlanSpec, solver: SolverConfig) -> int | None:
    """The smallest device count with a feasible completion, or None (none up to 2^16, or the
    budget ran out first)."""
    count = plan.cluster.count
    candidates = list(range(count + 1, 2 * count + 1)) if count <= 256 else []
    n = count * 2
    while n <= 2**16:
        candidates.append(n)
        n *= 2
    budget = Budget(NEAREST_DEVICES_BUDGET)
    try:
        for n in candidates:
            cl = replace(plan.cluster, count=n)
            best, _, _ = search(replace(plan, cluster=cl), solver, n, budget)
            if best is not None:
                return n
    except OutOfBudget:
        return None
    return None


def _largest_batch(plan: PlanSpec, cfg: SolverConfig) -> int | None:
    """The largest batch any assignment of the holes admits (0: none fits), or None when the
    budget ran out before any candidate fitted."""
    open_batch = _with_workload(plan, batch=None)
    cands, _ = _enumerate(open_batch, plan.cluster.count, cfg)
    budget = Budget(LARGEST_BATCH_BUDGET)
    best = 0
    try:
        for values in cands:
            cp = _concrete(open_batch, values)
            for mbs in _microbatch_options(cp):
                budget.spend()
                mp = _concrete(cp, {"microbatches": mbs}) if mbs is not None else cp
                lay = mp.shard_of("layers")
                step = mp.degree("batch") * ((lay.microbatches or 1) if lay else 1)
                got = _maximise(mp, "batch", step, BATCH_LIMIT)
                if got is not None:
                    best = max(best, got[0].workload.batch or 0)
    except OutOfBudget:
        return best or None
    return best


def synthesize(plan: PlanSpec, diags: Diagnostics, solver: SolverConfig | None = None
               ) -> tuple[PlanSpec, dict[str, object]] | None:
    """The best concrete plan for the holes, and what the search did (the report's
    "synthesis" entry); None, with a diagnostic, when nothing fits. The caller checks the
    plan it returns (pipeline.check_plan), so the verifier does not import the pipeline."""
    cfg = solver or SolverConfig()
    found, tried, core = ranked(plan, cfg, keep=1 + ALTERNATIVES)
    best = found[0][1] if found else None
    if best is None:
        _explain_infeasible(plan, cfg, core, tried, diags)
        return None
    return best, {
        "objective": " ".join(plan.objective or ("minimize", "time")),
        "candidates": tried,
        "values": _hole_values(plan, best),
        # the runners-up, so a user sees why the chosen plan won (estimates, not bounds)
        "alternatives": [{"values": _hole_values(plan, cp),
                          "estimate": summary(g, rates_of(cp))["estimate"]}
                         for _, cp, g in found[1:1 + ALTERNATIVES]],
    }



def _hole_values(plan: PlanSpec, filled: PlanSpec) -> dict[str, int | None]:
    """The value each hole of plan took in filled."""
    lay = plan.shard_of("layers")
    return {**{f"mesh.{a}": filled.axis_size(a) for a in _mesh_holes(plan)},
            **({"batch": filled.workload.batch} if plan.workload.batch is None else {}),
            **({"seq": filled.workload.seq} if plan.workload.seq is None else {}),
            **({"microbatches": filled.shard_of("layers").microbatches}  # type: ignore[union-attr]
               if lay is not None and lay.microbatches is None else {})}


def _explain_infeasible(plan: PlanSpec, cfg: SolverConfig, core, tried: int,  # type: ignore[no-untyped-def]
                        diags: Diagnostics) -> None:
    if core:
        spans = [(sp, text) for _, sp, text in core if sp is not None]
        primary = spans[0][0] if spans else plan.span
        diags.error("E092", f"no values for the holes of plan {plan.name!r} satisfy these "
                    f"constraints together: {'; '.join(t for _, _, t in core)}", primary,
                    "change one of the lines below",
                    tuple(Related(sp, text) for sp, text in spans[1:]))
        return
    hints = []
    n = _nearest_devices(plan, cfg) if _mesh_holes(plan) else None
    if n is not None:
        hints.append(f"needs at least {n} devices (the cluster has {plan.cluster.count})")
    if plan.workload.batch is not None:
        b_best = _largest_batch(plan, cfg)
        if b_best:
            hints.append(f"largest batch that fits: {b_best}")
        elif b_best == 0:
            hints.append(_nothing_fits(plan))
    diags.error("E093", f"plan {plan.name!r}: none of the {tried} assignments of its holes "
                "fits (memory, cache or claims)", plan.span, "; ".join(hints) or None)


def _nothing_fits(plan: PlanSpec) -> str:
    """Why not even one sequence per rank fits: the weights alone, when they are the reason."""
    from planc.verifier.advice import weights_alone_devices, weights_alone_text

    limit = min(lim for _, lim, _, _ in encode.memory_limits(plan, plan.cluster.device.memory))
    need = weights_alone_devices(plan, limit)
    if need is None or need > plan.cluster.count:
        return weights_alone_text(plan, limit) + f" (the cluster has {plan.cluster.count})"
    return "no batch fits, even 1 per data-parallel rank"
