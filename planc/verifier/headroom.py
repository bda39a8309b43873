"""Headroom: the largest batch and the longest sequence that still fit, per device class.

Memory grows monotonically with batch and sequence, so a binary search over the values the
plan's divisibility allows (multiples of the data-parallel degree x microbatches; of the
sequence degree, twice it for a zig-zag ring) finds the largest that fits each class's HBM.
"""

from __future__ import annotations

from dataclasses import replace

from planc.compiler.lower import memory_by_class
from planc.compiler.spec import PlanSpec
from planc.compiler.splits import microbatches, seq_chunk_step

LIMIT = 2**24  # search no further: a plan that fits beyond this has no practical limit


def _fits_by_class(plan: PlanSpec) -> dict[str, bool]:
    return {cid: m["peak"] <= m["capacity"] for cid, m in memory_by_class(plan).items()}


def _largest(plan: PlanSpec, step: int, with_value) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Per class, the largest multiple of step that fits (0 when even one step does not)."""
    classes = list(_fits_by_class(with_value(plan, step)))
    out = {}
    for cid in classes:
        lo, hi = 0, 1
        while hi * step <= LIMIT and _fits_by_class(with_value(plan, hi * step)).get(cid, False):
            lo, hi = hi, hi * 2
        if hi * step > LIMIT and lo == hi // 2 and lo:
            out[cid] = lo * step
            continue
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _fits_by_class(with_value(plan, mid * step)).get(cid, False):
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

    return {"batch": _largest(plan, b_step, with_batch), "seq": _largest(plan, s_step, with_seq)}


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
