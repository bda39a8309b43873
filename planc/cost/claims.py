"""The computed value behind each `require METRIC` line.

Exact values (parameter counts, weight bytes) come from the model and the placement graph;
time-based metrics come from the physical lower bound on step time, so for them the value is a
bound (a claim beyond it is refuted, never proved).
"""

from __future__ import annotations

from fractions import Fraction

from planc.compiler.ir import PlacementGraph
from planc.compiler.spec import PlanSpec
from planc.cost.time import rates_of, step_lower_bound
from planc.layout.compress import format_for, weight_bytes


def layer_params(plan: PlanSpec) -> int:
    m = plan.model
    attn = m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads)
    norms = 2 * m.hidden
    if m.arch == "mixtral":
        mlp = m.experts * 3 * m.hidden * m.ffn + m.experts * m.hidden
    else:
        mlp = 3 * m.hidden * m.ffn
    return attn + norms + mlp


def total_params(plan: PlanSpec) -> int:
    m = plan.model
    extra = m.hidden + (m.vocab * m.hidden if m.vocab else 0)
    return m.layers * layer_params(plan) + extra


def layer_weight_bytes(plan: PlanSpec) -> int:
    """Bytes of one whole (unsharded) layer in its storage formats."""
    m = plan.model
    e = m.dtype_bytes
    afmt = format_for(False, plan.compress_int8, plan.compress_mlp_2_4)
    mfmt = format_for(True, plan.compress_int8, plan.compress_mlp_2_4)
    attn = (weight_bytes(m.heads * m.head_dim, m.hidden, e, afmt)
            + 2 * weight_bytes(m.kv_heads * m.head_dim, m.hidden, e, afmt)
            + weight_bytes(m.hidden, m.heads * m.head_dim, e, afmt))
    n_mlp = m.experts if m.arch == "mixtral" else 1
    mlp = n_mlp * (2 * weight_bytes(m.ffn, m.hidden, e, mfmt)
                   + weight_bytes(m.hidden, m.ffn, e, mfmt))
    router = m.experts * m.hidden * e if m.arch == "mixtral" else 0
    return attn + mlp + router + 2 * m.hidden * e


def claim_value(plan: PlanSpec, graph: PlacementGraph, metric: str
                ) -> tuple[Fraction, str, bool] | None:
    """(value, unit dimension, is_bound) for a require metric; None when not applicable."""
    m = plan.model
    if metric == "params":
        return Fraction(total_params(plan)), "count", False
    if metric == "layer_params":
        return Fraction(layer_params(plan)), "count", False
    if metric == "layer_weights":
        return Fraction(layer_weight_bytes(plan)), "bytes", False
    if metric == "weights":
        extra = (m.vocab * m.hidden if m.vocab else 0) + m.hidden
        return Fraction(m.layers * layer_weight_bytes(plan) + extra * m.dtype_bytes), "bytes", False
    if metric == "weights_per_device":
        return Fraction(max(c.memory["weights"] for c in graph.classes)), "bytes", False
    if metric == "activations":
        return Fraction(max(c.memory["activations"] for c in graph.classes)), "bytes", False
    if metric == "devices":
        return Fraction(plan.devices), "count", False
    if metric == "cache":
        return Fraction(max(c.cache_resident for c in graph.classes)), "bytes", False
    if graph.phase == "decode":
        return _decode_claim(plan, graph, metric)
    t = step_lower_bound(graph, rates_of(plan))
    tokens = graph.batch * graph.seq
    if t <= 0:
        return None
    if metric == "throughput":
        return Fraction(tokens) / t, "tokens_per_s", True
    if metric == "latency":
        return t, "seconds", True
    if metric == "tpot":
        # Prefill: the seeds define TPOT as step time per token processed (1 / throughput).
        return t / tokens, "seconds", True
    if metric == "ttft":
        return t, "seconds", True
    return None


def _decode_claim(plan: PlanSpec, graph: PlacementGraph, metric: str
                  ) -> tuple[Fraction, str, bool] | None:
    """Decode bounds: TTFT = the prompt's prefill, TPOT = one step; MLPerf's definitions."""
    rates = rates_of(plan)
    ttft = step_lower_bound(graph, rates, "prefill")
    tpot = step_lower_bound(graph, rates, "decode")
    latency = ttft + max(0, graph.generate - 1) * tpot
    if metric == "ttft":
        return ttft, "seconds", True
    if metric == "tpot":
        return tpot, "seconds", True
    if metric == "latency":
        return latency, "seconds", True
    if metric == "throughput":  # output tokens per second
        return (Fraction(graph.batch * graph.generate) / latency if latency else None,
                "tokens_per_s", True)  # type: ignore[return-value]
    return None
