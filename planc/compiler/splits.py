"""What a checked plan's shard lines mean, before any bytes are counted: the degree of every
model dimension, the pipeline stages, microbatches, the sequence attention, the MoE mode.

lower and decode both read these; the arithmetic behind them is planc/layout's.
"""

from __future__ import annotations

from dataclasses import dataclass

from planc.compiler.spec import PlanSpec
from planc.layout.moe import MoeMode, moe_mode
from planc.layout.slices import pieces_per_part, slice_kind
from planc.layout.stages import even_stages


@dataclass(frozen=True)
class Degrees:
    """How many parts each model dimension is split into (kv_heads follow heads)."""

    batch: int
    seq: int
    layers: int
    heads: int
    head_dim: int
    ffn: int
    experts: int

    @staticmethod
    def of(plan: PlanSpec) -> Degrees:
        return Degrees(*(plan.degree(d) for d in
                         ("batch", "seq", "layers", "heads", "head_dim", "ffn", "experts")))


def plan_stages(plan: PlanSpec) -> list[tuple[int, int]]:
    sh = plan.shard_of("layers")
    L = plan.model.layers
    if sh is None:
        return [(0, L)]
    if sh.stages:
        return [(a, b + 1) for a, b in sh.stages]
    return even_stages(L, plan.degree("layers"))


def microbatches(plan: PlanSpec) -> int:
    sh = plan.shard_of("layers")
    return sh.microbatches if sh is not None and sh.microbatches else 1


def seq_chunk_step(plan: PlanSpec) -> int:
    """What a sequence length must be a multiple of: the sequence degree, times the pieces each
    part holds (two under a zig-zag layout, see planc/layout/slices.py)."""
    sh = plan.shard_of("seq")
    kind = slice_kind("seq", sh.attention if sh is not None else "local")
    return plan.degree("seq") * pieces_per_part(kind)


def attention_mode(plan: PlanSpec) -> str:
    sh = plan.shard_of("seq")
    return sh.attention if sh is not None and plan.degree("seq") > 1 else "local"


def plan_moe_mode(plan: PlanSpec) -> MoeMode:
    """The MoE layer's routing mode (planc/layout/moe.py); "local" for a dense model."""
    if not plan.model.experts:
        return "local"
    return moe_mode(plan.axes_of("experts"), plan.axes_of("ffn"),
                    plan.axes_of("batch") + plan.axes_of("seq"))
