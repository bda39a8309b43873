"""The computed value behind each `require METRIC` line.

Exact values (parameter counts, weight bytes) come from the model and the placement graph;
time-based metrics come from the sound bounds of cost/performance (prefill: step, TPOT = step
per token; decode: MLPerf's TTFT, TPOT, latency and output tokens/s), so for them the value is
a bound (a claim beyond it is refuted, never proved).
"""

from __future__ import annotations

from fractions import Fraction

from planc.compiler import vocab
from planc.compiler.ir import PlacementGraph
from planc.compiler.spec import PlanSpec
from planc.cost.performance import bound_arithmetic, performance
from planc.cost.time import rates_of
from planc.layout.compress import format_for, weight_bytes


def vector_params(plan: PlanSpec) -> int:
    """A layer's one-dimensional parameters: its two RMSNorms, the q/k/v biases of a family
    that has them (Qwen2) and the q/k norms over head_dim of one that has those (Qwen3)."""
    m, f = plan.model, plan.model.features
    biases = (m.heads + 2 * m.kv_heads) * m.head_dim if f.qkv_bias else 0
    return 2 * m.hidden + biases + (2 * m.head_dim if f.qk_norm else 0)


def layer_params(plan: PlanSpec) -> int:
    m = plan.model
    attn = m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads)
    norms = vector_params(plan)
    if m.arch == "mixtral":
        mlp = m.experts * 3 * m.hidden * m.ffn + m.experts * m.hidden
    else:
        mlp = 3 * m.hidden * m.ffn
    return attn + norms + mlp


def total_params(plan: PlanSpec) -> int:
    """The checkpoint's parameters: layers, final norm, and its vocabulary matrices (the
    embedding and the lm_head, one matrix when they are tied)."""
    m = plan.model
    return m.layers * layer_params(plan) + m.hidden + vocab.checkpoint_params(plan)


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
    return attn + mlp + router + vector_params(plan) * e


def model_weight_bytes(plan: PlanSpec) -> int:
    """Bytes of the whole model's weights in their storage formats (embeddings, final norm)."""
    m = plan.model
    extra = vocab.checkpoint_params(plan) + m.hidden  # one vocabulary matrix when tied
    return m.layers * layer_weight_bytes(plan) + extra * m.dtype_bytes


def _layer_parts(plan: PlanSpec) -> str:
    m = plan.model
    attn = m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads)
    mlp = (f"{m.experts} experts x 3 x {m.hidden:,} x {m.ffn:,} + router" if m.arch == "mixtral"
           else f"3 x {m.hidden:,} x {m.ffn:,}")
    f = m.features
    vectors = "norms" + (" and biases" if f.qkv_bias or f.qk_norm else "")
    return f"attention {attn:,} + MLP {mlp} + {vectors} {vector_params(plan):,}"


def claim_value(plan: PlanSpec, graph: PlacementGraph, metric: str
                ) -> tuple[Fraction, str, bool, str | None] | None:
    """(value, unit dimension, is_bound, the arithmetic) for a require metric; None when the
    plan has no such quantity (a transfer without a pipeline, experts without MoE)."""
    from planc.cost import traffic

    m = plan.model
    if metric == "params":
        return (Fraction(total_params(plan)), "count", False,
                f"{m.layers} layers x {layer_params(plan):,} + final norm"
                + (" + embeddings" if m.vocab else ""))
    if metric == "layer_params":
        return Fraction(layer_params(plan)), "count", False, _layer_parts(plan)
    if metric == "layer_weights":
        return (Fraction(layer_weight_bytes(plan)), "bytes", False,
                f"({_layer_parts(plan)}) parameters in their storage formats")
    if metric == "weights":
        return (Fraction(model_weight_bytes(plan)), "bytes", False,
                f"{m.layers} layers x {layer_weight_bytes(plan):,} B + final norm"
                + (" + embeddings" if m.vocab else ""))
    if metric == "weights_per_device":
        return Fraction(max(c.memory["weights"] for c in graph.classes)), "bytes", False, None
    if metric == "activations":
        return Fraction(max(c.memory["activations"] for c in graph.classes)), "bytes", False, \
            "the peak of live activations on the fullest device"
    if metric == "devices":
        return Fraction(plan.devices), "count", False, None
    if metric == "cache":
        return Fraction(max(c.cache_resident for c in graph.classes)), "bytes", False, None
    if metric == "layer_activations":
        value, how = traffic.layer_activations(plan)
        return value, "bytes", False, how
    if metric == "token_size":
        value, how = traffic.token_size(plan)
        return value, "bytes", False, how
    if metric == "expert_weights":
        got = traffic.expert_weights(plan)
        return (got[0], "bytes", False, got[1]) if got else None
    if metric in traffic.TRAFFIC:
        got = traffic.TRAFFIC[metric](plan, graph)
        return (got[0], "bytes", False, got[1]) if got else None
    key = {"throughput": "tokens_per_s", "latency": "latency_s", "tpot": "tpot_s",
           "ttft": "ttft_s"}.get(metric)
    if key is None:
        return None
    rates = rates_of(plan)
    bound = performance(graph, rates, bound=True)
    if not bound:
        return None
    if graph.phase != "decode" or metric == "ttft":
        how = bound_arithmetic(graph, rates)
    elif metric == "tpot":
        how = bound_arithmetic(graph, rates, "decode")
    else:
        how = (f"TTFT {bound_arithmetic(graph, rates)}; TPOT "
               f"{bound_arithmetic(graph, rates, 'decode')}")
    return bound[key], ("tokens_per_s" if metric == "throughput" else "seconds"), True, how
