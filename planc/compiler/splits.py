"""What a checked plan's shard lines mean, before any bytes are counted: the degree of every
model dimension, the pipeline stages, microbatches, the sequence attention, the MoE mode, and
the sizes one device's layer works on (local_dims, for a prefill and for a decode step).

lower and decode both read these; the arithmetic behind them is planc/layout's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from planc.compiler.spec import PlanSpec
from planc.cost.memory import LocalDims
from planc.layout.mesh import group as mesh_group
from planc.layout.moe import MoeMode, moe_mode, stacked_experts
from planc.layout.schedule import cache_capacity, static_step_reason
from planc.layout.slices import SliceKind, cdiv, pieces_per_part, slice_kind
from planc.layout.stages import even_stages
from planc.layout.strategies import attention_core, memory_terms

# What a layer's forward runs on: a prefill's prompt (the local sequence), or one decode step
# (one query token per sequence, attending to the cache).
Phase = Literal["prefill", "step"]


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


def plan_splits(plan: PlanSpec) -> dict[str, list[str]]:
    """Model dimension -> the mesh axes it is split over (the placement graph's `splits`)."""
    splits = {d: list(sh.axes) for sh in plan.shards for d in sh.dims}
    if "heads" in splits:
        splits.setdefault("kv_heads", splits["heads"])  # kv_heads follow heads (E052)
    return splits


def static_decode_step(plan: PlanSpec) -> bool:
    """Whether the plan's decode steps run at static addresses (one CUDA graph per microbatch
    and pipeline exchange;
    planc/layout/schedule.static_step_reason; `planc run` decodes greedily)."""
    core = attention_core(plan_splits(plan), attention_mode(plan))
    reason = static_step_reason(core, False)
    return reason is None


def attention_mode(plan: PlanSpec) -> str:
    sh = plan.shard_of("seq")
    return sh.attention if sh is not None and plan.degree("seq") > 1 else "local"


def plan_moe_mode(plan: PlanSpec) -> MoeMode:
    """The MoE layer's routing mode (planc/layout/moe.py); "local" for a dense model."""
    if not plan.model.experts:
        return "local"
    return moe_mode(plan.axes_of("experts"), plan.axes_of("ffn"),
                    plan.axes_of("batch") + plan.axes_of("seq"))


def plan_facts(plan: PlanSpec) -> frozenset[str]:
    """The facts of the plan's attention and MLP (planc/layout/strategies.py FACTS), the same
    on every stage: the sequence attention, and the MLP (dense, or the MoE mode)."""
    mlp = plan_moe_mode(plan) if plan.model.experts else "dense"
    return frozenset({f"attention:{attention_mode(plan)}", f"mlp:{mlp}"})


def plan_memory_terms(plan: PlanSpec, phase: Phase = "prefill") -> tuple[str, ...]:
    """The keys of the memory terms (planc/cost/memory.py) of the strategies the plan splits a
    dimension of (degree > 1), whose condition holds for its attention and MLP, for a
    prefill's layer and stages or a decode step's layer."""
    split = [d for sh in plan.shards for d in sh.dims if plan.degree(d) > 1]
    return memory_terms(split, plan_facts(plan), phase)


def kv_length(plan: PlanSpec) -> int:
    """Cache positions per sequence on one rank: context + generate, split over seq axes."""
    w = plan.workload
    return cache_capacity(w.context, w.generate, plan.degree("seq"))


def local_dims(plan: PlanSpec, phase: Phase = "prefill") -> LocalDims:
    """The sizes one device's layer works on, for one microbatch.

    prefill: the plan's `seq` tokens split over the sequence axes; keys are the local block
    under ring attention, the whole sequence otherwise. step (a decode plan): one query token
    per sequence, attending to the rank's cache (kv_length). Either way the MoE rows: with
    all_to_all every device sends its tokens' top_k copies out and, balanced, receives as many;
    replicated (experts on the tp axis): the group's tokens are the same on every device and
    each device takes its experts' share.
    """
    m, w = plan.model, plan.workload
    deg = Degrees.of(plan)
    assert w.batch is not None
    mb = cdiv(cdiv(w.batch, deg.batch), microbatches(plan))
    if phase == "step":
        seq_q, seq_kv = 1, kv_length(plan)
    else:
        assert w.seq is not None
        seq_q = cdiv(w.seq, deg.seq)
        seq_kv = seq_q if attention_mode(plan) == "ring" else w.seq
    tokens = mb * seq_q
    mode = plan_moe_mode(plan)
    routed = 0
    if m.experts:
        routed = (tokens * m.top_k if mode == "all_to_all"
                  else cdiv(tokens * m.top_k, deg.experts))
    static_rows = 0
    if m.experts and phase == "step" and static_decode_step(plan):  # runtime/moe.moe_static
        static_rows = tokens * (deg.experts if mode == "all_to_all" else 1)
    batched = static_rows > 0 and stacked_experts(plan.compress_int8, plan.compress_mlp_2_4)
    return LocalDims(routed=routed, experts_total=m.experts, moe_mode=mode,
                     static_moe_rows=static_rows, static_moe_batched=batched,
                     tokens=tokens, mb=mb, seq_q=seq_q, seq_kv=seq_kv, hidden=m.hidden,
                     heads=cdiv(m.heads, deg.heads), kv_heads=cdiv(m.kv_heads, deg.heads),
                     head_dim=cdiv(m.head_dim, deg.head_dim), ffn=cdiv(m.ffn, deg.ffn),
                     experts=cdiv(m.experts, deg.experts) if m.experts else 0, top_k=m.top_k,
                     elem=m.dtype_bytes)
