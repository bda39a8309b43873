"""Advice beside the verdict: warnings about plans that verify but cost more than they need to,
and the device count a model's weights alone require."""

from __future__ import annotations

from planc.compiler.ir import PlacementGraph
from planc.compiler.spec import PlanSpec
from planc.compiler.units import human_bytes
from planc.cost.performance import human_time
from planc.cost.time import (
    collective_estimate,
    in_phase,
    phase_steps,
    rates_of,
    step_efficiency,
    step_estimate,
)
from planc.diagnostics import Diagnostics

# Groups whose traffic is on the critical path of every layer: tensor parallel (all-reduce
# after attention and MLP) and expert parallel (all-to-all dispatch and combine).
_GROUP_DIMS = {"tensor-parallel": ("heads", "ffn", "head_dim"), "expert-parallel": ("experts",)}


def cross_node_groups(plan: PlanSpec, graph: PlacementGraph, diags: Diagnostics) -> None:
    """W102 for each tensor- or expert-parallel group that spans nodes, with the estimated time
    its collectives take per step over the inter-node links and what they would take inside a
    node."""
    if not graph.classes:
        return
    phase = graph.phase
    rates = rates_of(plan)
    cls = graph.classes[0]
    steps = phase_steps(graph, "decode") if phase == "decode" else 1
    step = step_estimate(graph, rates, phase=phase)
    e = step_efficiency(graph, rates, phase)  # the collectives priced as the step prices them
    for what, dims in _GROUP_DIMS.items():
        axes = {a for d in dims for a in plan.axes_of(d)}
        crossing = [c for c in cls.collectives if c.link == "inter" and set(c.axes) <= axes
                    and c.op in ("all_reduce", "all_to_all") and in_phase(c.after, phase)]
        if not crossing:
            continue
        cost = sum(collective_estimate(c, rates, e) for c in crossing) / steps
        inside = sum(collective_estimate(c, rates, e, link="intra") for c in crossing) / steps
        group = max(crossing, key=lambda c: c.group_size)
        diags.warning(
            "W102", f"plan {plan.name!r}: the {what} group over {' x '.join(group.axes)} "
            f"({group.group_size} devices) spans nodes of {plan.cluster.per_node}: its "
            f"{group.op.replace('_', '-')}s cross the inter-node links, an estimated "
            f"{human_time(cost)} per {'decode step' if phase == 'decode' else 'step'} of "
            f"{human_time(step)} ({human_time(inside)} within a node)", plan.mesh_span,
            f"keep {what} axes inside a node (the last mesh axes, product <= "
            f"{plan.cluster.per_node}) and put pipeline or data parallelism across nodes")


def weights_alone_devices(plan: PlanSpec, limit: int) -> int | None:
    """The fewest devices that hold the model's weights at `limit` bytes per device after the
    runtime reserve (None: the reserve alone exceeds the limit)."""
    from planc.cost.claims import model_weight_bytes

    room = limit - plan.cluster.device.reserve
    return -(-model_weight_bytes(plan) // room) if room > 0 else None


def weights_alone_text(plan: PlanSpec, limit: int) -> str:
    """'the weights alone need N devices', for hints where the weights do not fit."""
    need = weights_alone_devices(plan, limit)
    reserve = human_bytes(plan.cluster.device.reserve)
    if need is None:
        return f"the runtime reserve alone ({reserve}) exceeds the {human_bytes(limit)} limit"
    return (f"the weights alone need at least {need} devices at {human_bytes(limit)} each "
            f"({reserve} of it the runtime reserve): split them over more devices (tensor, "
            "pipeline or expert parallelism) or compress them")
