"""Decode: the placement graph of `phase decode` (a prompt of `context` tokens, then `generate`
tokens one step at a time, greedy), built from the prefill graph of the prompt plus:

  - the KV cache, allocated for context + generate positions and sharded as the plan says:
    over kv heads for tensor parallel (and head_dim slices), over stages for pipeline, over
    sequence chunks for sequence parallel (each rank keeps its chunk; new tokens are appended
    round-robin, so chunks stay balanced), per data-parallel / expert-parallel replica over
    the batch;
  - the lm_head [vocab, hidden] on the last stage and the logits of one step (compiler/vocab.py:
    none added where a tied lm_head is the stage's own embedding; rows split and padded with
    `shard vocab`, the greedy token then an all-gather of each part's best logit);
  - one decode step's ops and buffers per layer (T = the step's tokens: one per sequence of the
    microbatch), whose collectives are named `decode:*`, and with sequence parallelism a
    flash-decoding merge (each rank attends over its chunk; partial outputs and log-sum-exps
    are all-gathered and merged).

TTFT is the prefill of the context; TPOT is one decode step (MLPerf: TPOT = (latency - TTFT) /
(generated - 1)). Memory is the larger of the prompt's prefill and a decode step, on top of
the weights and the whole KV cache.
"""

from __future__ import annotations

from dataclasses import replace

from planc.compiler import vocab
from planc.compiler.collectives import stage_collectives, stage_facts
from planc.compiler.ir import Buffer, Collective, Op, PlacementGraph
from planc.compiler.spec import PlanSpec
from planc.compiler.splits import (
    Degrees,
    kv_length,
    local_dims,
    plan_memory_terms,
    static_decode_step,
)
from planc.cost.memory import (
    first_step_tuning_bytes,
    layer_program,
    live_at,
    peak_live,
    static_step_bytes,
    with_peak,
)
from planc.layout import strategies
from planc.layout.schedule import static_step_qkv_split
from planc.layout.slices import cdiv


def prompt_plan(plan: PlanSpec) -> PlanSpec:
    """The prefill of the prompt: the same plan with a prefill workload of `context` tokens."""
    w = plan.workload
    return replace(plan, workload=replace(w, phase="prefill", seq=w.context))


def kv_cache_bytes(plan: PlanSpec, n_layers: int) -> int:
    """K and V for every cached position of the rank's sequences, for its stage's layers."""
    d = local_dims(plan, "step")
    b_local = cdiv(plan.workload.batch or 0, Degrees.of(plan).batch)
    return n_layers * 2 * b_local * kv_length(plan) * d.kv_heads * d.head_dim * d.elem


def step_program(plan: PlanSpec):  # type: ignore[no-untyped-def]
    d = local_dims(plan, "step")
    return d, *layer_program(d, plan_memory_terms(plan, "step"), plan.degree("seq"))


def decode_rows(plan: PlanSpec, prompt_rows: dict[str, dict[str, int]],
                layers_per_class: dict[str, int], last: str) -> dict[str, dict[str, int]]:
    """Memory rows of a decode plan from its prompt's rows (see the module docstring)."""
    m = plan.model
    d, ops, bufs = step_program(plan)
    residual = d.tokens * m.hidden * m.dtype_bytes
    step_peak = peak_live(bufs, len(ops)) + residual
    dev = plan.cluster.device
    if static_decode_step(plan) and dev.autotune:
        # the first warm-up's moment in front of the attention's autotuner (memory.py says so)
        attention = next((i for i, o in enumerate(ops) if o.name.startswith("attention_")), None)
        if attention is None:  # every core of memory.ATTENTION_TERMS names its op so
            raise ValueError("the decode step's layer program has no attention_* op")
        plain_qkv = not (plan.compress_int8 or m.features.qkv_bias)
        qkv_split = static_step_qkv_split(d.tokens, not m.features.qk_norm, plain_qkv) > 1
        tuning = first_step_tuning_bytes(dev.autotune, live_at(bufs, attention) + residual,
                                         dev.workspace, qkv_split)
    else:
        tuning = 0
    lm_head = vocab.lm_head_shard(plan, is_first=len(prompt_rows) == 1)
    out = {}
    for cid, row in prompt_rows.items():
        row = dict(row)
        n = layers_per_class[cid]
        row["kv_cache"] = kv_cache_bytes(plan, n)
        if cid == last and m.vocab:
            row["weights"] += lm_head.bytes if lm_head else 0  # a tied one is the embedding
            # float32 logits of the step, this device's vocabulary rows
            step_peak_c = step_peak + d.tokens * vocab.vocab_rows(plan) * 4
        else:
            step_peak_c = step_peak
        row["activations"] = max(row["activations"], step_peak_c)
        if static_decode_step(plan):
            w = plan.workload
            rows = cdiv(w.batch or 0, Degrees.of(plan).batch)
            first = cid == next(iter(prompt_rows))  # a later stage receives hidden states
            row["buffers"] += static_step_bytes(rows, w.generate, w.context + w.generate,
                                                d.head_dim, m.dtype_bytes,
                                                plan.cluster.device.workspace,
                                                0 if first else m.hidden)  # fmt: skip
            # the autotuner's buffer is a library's, not an activation: what its moment holds
            # above the activations' peak
            row["buffers"] += max(0, tuning - row["activations"])
        out[cid] = with_peak(row)
    return out


def extend(plan: PlanSpec, graph: PlacementGraph) -> PlacementGraph:
    """Add the decode step (ops, buffers, collectives), the KV cache and the lm_head."""
    m, w = plan.model, plan.workload
    d, step_ops, step_bufs = step_program(plan)
    e, h = m.dtype_bytes, m.hidden
    steps = max(0, w.generate - 1)
    nmb = graph.microbatches
    prompt_tokens = local_dims(prompt_plan(plan)).tokens  # what the prefill collectives carry
    classes = []
    first_id, last = graph.classes[0].id, graph.classes[-1].id
    static = static_decode_step(plan)
    rows = decode_rows(plan, {c.id: c.memory for c in graph.classes},
                       {c.id: c.layers[1] - c.layers[0] for c in graph.classes}, last)
    for c in graph.classes:
        n = c.layers[1] - c.layers[0]
        base = len(c.ops)
        ops = list(c.ops) + [Op(name=f"decode_{o.name}", flops=o.flops, bytes=o.hbm_bytes,
                                calls=n * nmb * steps) for o in step_ops]
        bufs = list(c.buffers) + [
            Buffer(name=f"decode_{b.name}", role="activation", bytes=b.bytes,
                   live=(base + b.first, base + min(b.last, len(step_ops) - 1)), per_layer=True)
            for b in step_bufs]
        bufs.append(Buffer(name="kv_cache", role="kv_cache", bytes=kv_cache_bytes(plan, n),
                           live=(0, len(ops) - 1), per_layer=False))
        shards = list(c.shards)
        colls = list(c.collectives)
        if c.id == last and m.vocab:
            lm_head = vocab.lm_head_shard(plan, is_first=c.id == graph.classes[0].id)
            if lm_head is not None:
                shards.append(lm_head)
            rows_l = vocab.vocab_rows(plan)
            ops.append(Op(name="decode_lm_head", flops=2 * d.tokens * h * rows_l,
                          bytes=(rows_l * h + d.tokens * h) * e + d.tokens * rows_l * 4,
                          calls=nmb * steps))
        # a step repeats the prefill's collectives with one step's payload (the same groups,
        # calls per step), but those its records leave to a step's own (strategies.Comm)
        colls += [Collective(op=col.op, axes=col.axes, group_size=col.group_size,
                             bytes=max(1, col.bytes * d.tokens // max(1, prompt_tokens)),
                             calls=col.calls * steps, after=f"decode:{col.after}", link=col.link)
                  for col in c.collectives if strategies.step_copy(col.op, col.after, static)]
        colls += stage_collectives(plan, d, stage_facts(plan, c.id == first_id, c.id == last),
                                   n * nmb * steps, nmb * steps, phase="step", static=static)
        resident = c.cache_resident
        if resident:
            # a decode step re-reads the stage's layer weights (and the lm_head), its KV cache
            # and the step's residual stream [T, hidden]; of the embedding only its tokens' rows,
            # unless it is also this stage's (tied) lm_head
            first = c.id == graph.classes[0].id
            embed = vocab.matrix_bytes(plan) if first and not (
                c.id == last and m.features.tie_embeddings) else 0
            resident = (rows[c.id]["weights"] - embed + rows[c.id]["kv_cache"]
                        + d.tokens * h * e)
        classes.append(c.model_copy(update={"ops": ops, "buffers": bufs, "collectives": colls,
                                            "shards": shards, "memory": rows[c.id],
                                            "cache_resident": resident}))
    return graph.model_copy(update={"classes": classes, "phase": "decode",
                                    "context": w.context, "generate": w.generate})

