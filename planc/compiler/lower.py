"""lower: a checked PlanSpec (no holes) -> PlacementGraph.

Order of the work, each step reading only the ones before it:
  1. axis roles and degrees (how many ways each model dimension is split);
  2. stages (explicit, or an even contiguous split of the layers over the pipeline axis);
  3. per stage, one device class: tensor shards with bytes, the layer's ops and buffers with
     live intervals, collectives with bytes per call and calls per step;
  4. memory per class: weights + peak of live buffers + communication buffers + reserve.
Where a split does not divide (the verifier reports it), sizes round up so that the memory table
still shows what the plan would need.
"""

from __future__ import annotations

from planc.compiler import vocab
from planc.compiler.check_structure import axis_roles
from planc.compiler.collectives import stage_collectives, stage_facts
from planc.compiler.ir import (
    Axis,
    Buffer,
    DeviceClass,
    Mesh,
    Op,
    PlacementGraph,
    Stage,
    TensorShard,
)
from planc.compiler.spec import PlanSpec
from planc.compiler.splits import (
    Degrees,
    attention_mode,
    local_dims,
    microbatches,
    plan_memory_terms,
    plan_splits,
    plan_stages,
    zigzag,
)
from planc.cost.memory import (
    STAGE_TERMS,
    LocalDims,
    StageBuffer,
    StageShape,
    layer_program,
    peak_live,
    with_peak,
)
from planc.layout.compress import Format, format_for, weight_bytes
from planc.layout.slices import cdiv


def weight_format(plan: PlanSpec, mlp: bool) -> Format:
    return format_for(mlp, plan.compress_int8, plan.compress_mlp_2_4)


def layer_shards(plan: PlanSpec, deg: Degrees) -> list[TensorShard]:
    """The tensors of one decoder layer as one device holds them (HF names)."""
    m = plan.model
    e = m.dtype_bytes
    h = m.hidden
    heads_l, kv_l = cdiv(m.heads, deg.heads), cdiv(m.kv_heads, deg.heads)
    hd_l = cdiv(m.head_dim, deg.head_dim)
    f_l = cdiv(m.ffn, deg.ffn)
    attn_axes = list(plan.axes_of("heads")) + list(plan.axes_of("head_dim"))
    ffn_axes = list(plan.axes_of("ffn"))
    afmt, mfmt = weight_format(plan, False), weight_format(plan, True)
    out: list[TensorShard] = []

    def add(name: str, gshape: list[int], lshape: list[int], split: dict[str, list[str]],
            fmt: str) -> None:
        nbytes = (lshape[0] * e if fmt == "norm" else
                  weight_bytes(lshape[-2], lshape[-1], e, fmt)  # type: ignore[arg-type]
                   * (lshape[0] if len(lshape) == 3 else 1))
        out.append(TensorShard(name=name, global_shape=gshape, local_shape=lshape,
                               split={k: v for k, v in split.items() if v},
                               format="dense" if fmt == "norm" else fmt,  # type: ignore[arg-type]
                               dtype=m.dtype, bytes=nbytes, per_layer=True))

    p = "layers.{i}."
    add(p + "input_layernorm.weight", [h], [h], {}, "norm")
    add(p + "self_attn.q_proj.weight", [m.heads * m.head_dim, h], [heads_l * hd_l, h],
        {"0": attn_axes}, afmt)
    add(p + "self_attn.k_proj.weight", [m.kv_heads * m.head_dim, h], [kv_l * hd_l, h],
        {"0": attn_axes}, afmt)
    add(p + "self_attn.v_proj.weight", [m.kv_heads * m.head_dim, h], [kv_l * hd_l, h],
        {"0": attn_axes}, afmt)
    add(p + "self_attn.o_proj.weight", [h, m.heads * m.head_dim], [h, heads_l * hd_l],
        {"1": attn_axes}, afmt)
    if m.features.qkv_bias:  # the rows of the q/k/v weights above (Qwen2)
        for name, n, n_l in (("q", m.heads, heads_l), ("k", m.kv_heads, kv_l),
                             ("v", m.kv_heads, kv_l)):
            add(p + f"self_attn.{name}_proj.bias", [n * m.head_dim], [n_l * hd_l],
                {"0": attn_axes}, "norm")
    if m.features.qk_norm:  # over head_dim, shared by every head (Qwen3)
        hd_axes = list(plan.axes_of("head_dim"))
        for name in ("q_norm", "k_norm"):
            add(p + f"self_attn.{name}.weight", [m.head_dim], [hd_l], {"0": hd_axes}, "norm")
    add(p + "post_attention_layernorm.weight", [h], [h], {}, "norm")
    if m.arch == "llama":
        add(p + "mlp.gate_proj.weight", [m.ffn, h], [f_l, h], {"0": ffn_axes}, mfmt)
        add(p + "mlp.up_proj.weight", [m.ffn, h], [f_l, h], {"0": ffn_axes}, mfmt)
        add(p + "mlp.down_proj.weight", [h, m.ffn], [h, f_l], {"1": ffn_axes}, mfmt)
    else:
        e_l = cdiv(m.experts, deg.experts)
        ex_axes = list(plan.axes_of("experts"))
        add(p + "mlp.gate.weight", [m.experts, h], [m.experts, h], {}, "dense")
        add(p + "mlp.experts.gate_proj", [m.experts, m.ffn, h], [e_l, f_l, h],
            {"0": ex_axes, "1": ffn_axes}, mfmt)
        add(p + "mlp.experts.up_proj", [m.experts, m.ffn, h], [e_l, f_l, h],
            {"0": ex_axes, "1": ffn_axes}, mfmt)
        add(p + "mlp.experts.down_proj", [m.experts, h, m.ffn], [e_l, h, f_l],
            {"0": ex_axes, "2": ffn_axes}, mfmt)
    return out


def stage_buffers(plan: PlanSpec, ld: LocalDims, si: int, n_stages: int) -> list[StageBuffer]:
    """What a stage holds beside its layers' transient buffers, as the runtime allocates it
    (planc/backends/torch/runtime/pipeline.py, program.py, model.py):
      - the first stage keeps its rows of the inputs for the whole run (embeddings, or token
        ids with a vocabulary) and clones each microbatch into the residual stream x;
      - every stage owns x [T, hidden] (layers update it in place);
      - the terms of the plan's strategies (cost/memory.py STAGE_TERMS, by the keys of their
        records: pipeline's receive posted ahead and send in flight);
      - the last stage's final norm makes a new [T, hidden]; with several microbatches they
        are copied into one preallocated output for the stage's rows;
      - RoPE cos / sin tables [seq_local, head_dim / 2] each; the cuBLAS workspace.
    The prompt of a decode (phase prefill with generate > 0: decode.prompt_plan) runs in
    the decode rounds instead (the runtime's pipeline.generate): a stage posts its receive only
    after computing, and the last stage keeps token ids, not the hidden outputs; so neither
    recv_next nor outputs.
    """
    m, w = plan.model, plan.workload
    assert w.batch is not None
    e, h, T = m.dtype_bytes, m.hidden, ld.tokens
    nmb = microbatches(plan)
    b_local = cdiv(w.batch, plan.degree("batch"))
    first, last = si == 0, si == n_stages - 1
    rounds = w.generate > 0  # a decode's prompt (see above)
    out = [StageBuffer("residual", "activation", T * h * e),
           StageBuffer("rope_tables", "activation", 2 * ld.seq_q * (m.head_dim // 2) * e)]
    if first:
        per_elem = 8 if m.vocab else h * e  # int64 token ids, or embeddings
        out.append(StageBuffer("inputs", "io", b_local * ld.seq_q * per_elem))
    stage = StageShape(first, last, nmb, rounds)
    for key in plan_memory_terms(plan):
        if key in STAGE_TERMS:
            out += STAGE_TERMS[key](stage, ld)
    if last:
        if nmb > 1 and not rounds:
            out.append(StageBuffer("outputs", "io", b_local * ld.seq_q * h * e))
        out.append(StageBuffer("final_norm_out", "activation", T * h * e, transient=True))
    ws = plan.cluster.device.workspace
    if ws:
        out.append(StageBuffer("cublas_workspace", "workspace", ws))
    return out


def stage_memory(plan: PlanSpec, ld: LocalDims, layer_peak: int, layer_weights: int,
                 si: int, n_stages: int, n_layers: int) -> dict[str, int]:
    """The memory table row of one device class (bytes): what the HBM obligation sums."""
    m, dev = plan.model, plan.cluster.device
    e, h = m.dtype_bytes, m.hidden
    weights = layer_weights * n_layers + (h * e if si == n_stages - 1 else 0) + (
        vocab.matrix_bytes(plan) if m.vocab and si == 0 else 0)
    bufs = stage_buffers(plan, ld, si, n_stages)
    steady = sum(b.bytes for b in bufs if not b.transient and b.role in ("activation", "io"))
    transient = max([layer_peak if n_layers else 0] + [b.bytes for b in bufs if b.transient])
    comm = sum(b.bytes for b in bufs if b.role in ("communication", "workspace"))
    memory = with_peak({"weights": weights, "activations": steady + transient, "kv_cache": 0,
                        "buffers": comm, "reserve": dev.reserve})
    memory["capacity"] = dev.memory
    return memory


def memory_by_class(plan: PlanSpec) -> dict[str, dict[str, int]]:
    """Memory rows per device class without building the graph (headroom and synthesis)."""
    if plan.workload.phase == "decode":
        from planc.compiler import decode

        prompt = decode.prompt_plan(plan)
        stages = plan_stages(plan)
        ids = [f"stage{i}" if plan.axes_of("layers") else "all" for i in range(len(stages))]
        return decode.decode_rows(plan, memory_by_class(prompt),
                                  {cid: b - a for cid, (a, b) in zip(ids, stages)}, ids[-1])
    deg = Degrees.of(plan)
    ld = local_dims(plan)
    ops, bufs = layer_program(ld, plan_memory_terms(plan), deg.seq)
    peak = peak_live(bufs, len(ops))
    layer_w = sum(s.bytes for s in layer_shards(plan, deg))
    stages = plan_stages(plan)
    pp = bool(plan.axes_of("layers"))
    return {(f"stage{i}" if pp else "all"): stage_memory(plan, ld, peak, layer_w, i, len(stages),
                                                       max(0, b - a))
            for i, (a, b) in enumerate(stages)}


def lower(plan: PlanSpec) -> PlacementGraph:
    m, w, dev = plan.model, plan.workload, plan.cluster.device
    assert w.batch is not None and w.seq is not None and not plan.has_holes
    if w.phase == "decode":
        from planc.compiler import decode

        return decode.extend(plan, lower(decode.prompt_plan(plan)))
    deg = Degrees.of(plan)
    roles = axis_roles(plan)
    mesh = Mesh(axes=[Axis(name=a, size=s or 1, role=roles.get(a, "idle")) for a, s in plan.mesh],
                devices_per_node=plan.cluster.per_node)
    stages = plan_stages(plan)
    nmb = microbatches(plan)
    ld = local_dims(plan)
    mode = attention_mode(plan)
    e, h = m.dtype_bytes, m.hidden
    T = ld.tokens
    ops_spec, bufs_spec = layer_program(ld, plan_memory_terms(plan), deg.seq)
    layer_peak = peak_live(bufs_spec, len(ops_spec))
    shards = layer_shards(plan, deg)
    pp_axis = plan.axes_of("layers")[0] if plan.axes_of("layers") else None
    classes: list[DeviceClass] = []
    graph_stages: list[Stage] = []
    for si, (first, last) in enumerate(stages):
        n_layers = max(0, last - first)
        is_first, is_last = si == 0, si == len(stages) - 1
        calls = n_layers * nmb
        cls_shards = list(shards)
        embed = vocab.embed_shard(plan) if is_first else None
        if embed is not None:
            cls_shards.append(embed)
        if is_last:
            cls_shards.append(TensorShard(name="norm.weight", global_shape=[h], local_shape=[h],
                                          split={}, format="dense", dtype=m.dtype, bytes=h * e,
                                          per_layer=False))
        weights = sum(s.bytes * (n_layers if s.per_layer else 1) for s in cls_shards)
        # the final norm runs after the layers: an op of its own, so the layer's buffers and
        # its output are never live together
        n_ops = len(ops_spec) + (1 if is_last else 0)
        buffers = [Buffer(name=b.name, role=b.role, bytes=b.bytes,  # type: ignore[arg-type]
                          live=(n_ops - 1, n_ops - 1) if b.transient else (0, n_ops - 1),
                          per_layer=False)
                   for b in stage_buffers(plan, ld, si, len(stages))]
        buffers += [Buffer(name=b.name, role="activation", bytes=b.bytes,
                           live=(b.first, min(b.last, n_ops - 1)), per_layer=True)
                    for b in bufs_spec]
        collectives = stage_collectives(plan, ld, stage_facts(plan, is_first, is_last),
                                        calls, nmb)
        ops = [Op(name=o.name, flops=o.flops, bytes=o.hbm_bytes, calls=calls) for o in ops_spec]
        if is_last:
            ops.append(Op(name="final_norm", flops=4 * T * h, bytes=2 * T * h * e, calls=nmb))
        memory = stage_memory(plan, ld, layer_peak, sum(x.bytes for x in shards), si,
                              len(stages), n_layers)
        assert memory["weights"] == weights, "weights in the table and in the shards must agree"
        cid = f"stage{si}" if pp_axis else "all"
        fixed = {pp_axis: si} if pp_axis else {}
        count = plan.devices // (plan.axis_size(pp_axis) if pp_axis else 1)
        resident = 0
        sh = plan.shard_of("layers")
        if sh is not None and sh.fit_cache:
            # What every microbatch re-reads: the stage's weights except the embedding table
            # (a lookup touches only its tokens' rows), plus the microbatch's residual stream.
            resident = weights - (embed.bytes if embed else 0) + T * h * e
        classes.append(DeviceClass(id=cid, fixed=fixed, count=count, layers=(first, last),
                                   shards=cls_shards, ops=ops, buffers=buffers,
                                   collectives=collectives, memory=memory,
                                   cache_resident=resident))
        graph_stages.append(Stage(index=si, layers=(first, last), device_class=cid))
    strategies = sorted({r for r in roles.values() if r != "idle"})
    splits = plan_splits(plan)
    return PlacementGraph(plan=plan.name, model=m.name, mesh=mesh, batch=w.batch, seq=w.seq,
                          microbatches=nmb, strategies=strategies,
                          splits=dict(sorted(splits.items())), attention=mode,  # type: ignore[arg-type]
                          zigzag=zigzag(plan),
                          stages=graph_stages,
                          classes=classes, device_capacity=dev.memory, cache_capacity=dev.cache)
