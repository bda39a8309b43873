"""The collectives of a device class, from the strategy records (planc/layout/strategies.py):
lower lists a prefill's, decode adds a step's own. A strategy's collectives are its record's
`collectives`; nothing here names a strategy.
"""

from __future__ import annotations

from math import prod

from planc.compiler.ir import Collective
from planc.compiler.spec import PlanSpec
from planc.compiler.splits import link_of, plan_facts
from planc.cost.memory import MESSAGE_BYTES, LocalDims
from planc.layout import strategies


def stage_facts(plan: PlanSpec, is_first: bool, is_last: bool) -> frozenset[str]:
    """What holds for one stage's device class, of the FACTS a strategy record's collective may
    be conditioned on (planc/layout/strategies.py)."""
    m = plan.model
    facts = set(plan_facts(plan))
    if m.vocab and is_first:
        facts.add("embedding")
    if m.vocab and is_last:
        facts.add("lm_head")
    if not is_last:
        facts.add("sends")
    return frozenset(facts)


def stage_collectives(plan: PlanSpec, ld: LocalDims, facts: frozenset[str], layer_calls: int,
                      mb_calls: int, phase: str = "prefill", static: bool = False
                      ) -> list[Collective]:
    """One device class's collectives: those of the records of the plan's strategies
    (planc/layout/strategies.py collectives) whose condition holds and whose group has more
    than one device, sized from the layer's dims `ld`. `layer_calls` and `mb_calls` are the
    calls per step of one per layer and microbatch and of one per microbatch; a prefill's
    collective that never runs (a stage without layers) is left out, a decode step's is
    listed with 0 calls as the step's copies of the prefill's are; `static`: the step runs at
    static addresses (strategies.runs_in_step)."""
    out: list[Collective] = []
    split = [d for sh in plan.shards for d in sh.dims]
    for c in strategies.collectives(split, phase):
        if c.when and not facts & set(c.when):
            continue
        if phase == "step" and not strategies.runs_in_step(c, static):
            continue
        axes = [a for d in c.over for a in plan.axes_of(d)]
        if c.mesh_order:
            axes = [a for a, _ in plan.mesh if a in axes]
        size = prod(plan.axis_size(a) for a in axes)
        calls = {"layer": layer_calls, "microbatch": mb_calls,
                 "hop": layer_calls * (size - 1)}[c.calls]
        if size > 1 and (calls > 0 or phase == "step"):
            out.append(Collective(op=c.op, axes=axes, group_size=size,  # type: ignore[arg-type]
                                  bytes=MESSAGE_BYTES[c.size](ld), calls=calls,
                                  after=c.after if phase == "prefill" else f"decode:{c.after}",
                                  link=link_of(plan, axes)))  # type: ignore[arg-type]
    return out
