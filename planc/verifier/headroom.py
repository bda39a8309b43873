"""Headroom: the largest batch and the longest sequence that still fit, per device class.

Memory grows monotonically with batch and sequence, so a binary search over the values the
plan's divisibility allows (multiples of the data-parallel degree x microbatches; of the
sequence degree, twice it for a zig-zag ring) finds the largest that fits each class's HBM and
every `require` of the plan (memory limits per class; claims for the whole plan).
"""

from __future__ import annotations

from dataclasses import replace

from planc.compiler.lower import lower, memory_by_class
from planc.compiler.spec import PlanSpec
from planc.compiler.splits import microbatches, seq_chunk_step
from planc.verifier import encode

LIMIT = 2**24  # search no further: a plan that fits beyond this has no practical limit


def _fits_by_class(plan: PlanSpec) -> dict[str, bool]:
    """Per class: within every memory limit, and (for the whole plan) every other `require`
    still holds: a headroom the plan's own limits refute is no headroom."""
    fits = {cid: encode.memory_fits(plan, m["peak"], m["capacity"])
            for cid, m in memory_by_class(plan).items()}
    if any(fits.values()) and any(r.metric != "memory" for r in plan.requires):
        values = encode.variables(plan)
        if not all(ob.check(values) for ob in encode.claims(plan, lower(plan))):
            return dict.fromkeys(fits, False)
    return fits


def _largest(plan: PlanSpec, step: int, with_value, current: int  # type: ignore[no-untyped-def]
             ) -> dict[str, int]:
    """Per class, the largest multiple of step that fits (0 when even one step does not),
    searching up from the plan's own value, which fits: claims such as `throughput >= X` may
    fail below it."""
    seen: dict[int, dict[str, bool]] = {}  # the classes' searches probe the same values

    def fits(k: int, cid: str) -> bool:
        if k not in seen:
            seen[k] = _fits_by_class(with_value(plan, k * step))
        return seen[k].get(cid, False)

    classes = list(_fits_by_class(with_value(plan, step)))
    start = current // step if current % step == 0 else 0
    out = {}
    for cid in classes:
        lo, hi = start, max(1, 2 * start)
        while hi * step <= LIMIT and fits(hi, cid):
            lo, hi = hi, hi * 2
        if hi * step > LIMIT and lo == hi // 2 and lo:
            out[cid] = lo * step
            continue
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid, cid):
                lo = mid
            else:
                hi = mid
        out[cid] = lo * step
    return out


def headroom(plan: PlanSpec) -> dict[str, dict[str, int]]:
    """{"batch": {class: largest batch}, "seq": {class: longest seq}} at the plan's other values."""
    b_step = plan.degree("batch") * microbatches(plan)
    s_step = seq_chunk_step(plan)

    def with_batch(p: PlanSpec, b: int) -> PlanSpec:
        return replace(p, workload=replace(p.workload, batch=b))

    def with_seq(p: PlanSpec, s: int) -> PlanSpec:
        if p.workload.phase == "decode":  # the longest prompt, generate unchanged
            return replace(p, workload=replace(p.workload, context=s,
                                               seq=s + p.workload.generate))
        return replace(p, workload=replace(p.workload, seq=s))

    w = plan.workload
    seq_now = w.context if w.phase == "decode" else w.seq
    return {"batch": _largest(plan, b_step, with_batch, w.batch or 0),
            "seq": _largest(plan, s_step, with_seq, seq_now or 0)}


def headroom_text(h: dict[str, dict[str, int]]) -> str:
    """The plan-level limits (the tightest class) and which classes set them."""

    def fmt(d: dict[str, int]) -> str:
        low = min(d.values())
        limiting = [k for k, v in d.items() if v == low]
        shown = f"{low:,}" if low < LIMIT else f">= {LIMIT:,}"
        if len(limiting) == len(d):
            return shown
        names = ", ".join(limiting[:3]) + (", ..." if len(limiting) > 3 else "")
        return f"{shown} (limited by {names})"

    return f"largest batch that fits: {fmt(h['batch'])}; longest seq: {fmt(h['seq'])}"


def decode_headroom_text(h: dict[str, dict[str, int]]) -> str:
    return headroom_text(h).replace("longest seq", "longest context")
