"""What a checked plan's shard lines mean, before any bytes are counted: the degree of every
model dimension, the pipeline stages, microbatches, the sequence attention, the MoE mode.

lower and decode both read these; the arithmetic behind them is planc/layout's.
"""

from __future__ import annotations

from dataclasses import dataclass

from planc.compiler.spec import PlanSpec
from planc.layout.mesh import group as mesh_group
from planc.layout.moe import MoeMode, moe_mode
from planc.layout.slices import SliceKind, pieces_per_part, slice_kind
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
    """What a sequence length must be a multiple of: the sequence degree (a multiple of twice
    it also balances causal attention, see seq_slice_kind)."""
    return plan.degree("seq")


def seq_slice_kind(plan: PlanSpec) -> SliceKind:
    """How ring or gather attention lays the sequence (the prompt, in decode) over its parts:
    zig-zag (2R chunks, part r holding chunks r and 2R-1-r, so each part does the same causal
    work) when the length is a multiple of 2R; otherwise R contiguous chunks, correct but with
    the later parts doing more of the causal work."""
    sh, deg, w = plan.shard_of("seq"), plan.degree("seq"), plan.workload
    if sh is None or deg <= 1:
        return "even"
    kind = slice_kind("seq", sh.attention)
    n = w.context if w.phase == "decode" else w.seq
    if n is None or n % (deg * pieces_per_part(kind)):
        return "even"
    return kind


def zigzag(plan: PlanSpec) -> bool:
    return seq_slice_kind(plan) == "zigzag"


def link_of(plan: PlanSpec, axes: list[str]) -> str:
    """intra when the group of rank 0 over these axes stays inside one node."""
    group = mesh_group([(a, s or 1) for a, s in plan.mesh], 0, axes)
    return "intra" if max(group) < plan.cluster.per_node else "inter"


def attention_mode(plan: PlanSpec) -> str:
    sh = plan.shard_of("seq")
    return sh.attention if sh is not None and plan.degree("seq") > 1 else "local"


def plan_moe_mode(plan: PlanSpec) -> MoeMode:
    """The MoE layer's routing mode (planc/layout/moe.py); "local" for a dense model."""
    if not plan.model.experts:
        return "local"
    return moe_mode(plan.axes_of("experts"), plan.axes_of("ffn"),
                    plan.axes_of("batch") + plan.axes_of("seq"))
