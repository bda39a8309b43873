"""Time: a sound lower bound on a forward step (for refuting claims) and an estimate.

The bound uses peak rates and assumes perfect overlap, so no schedule of the plan's placement
can beat it:
  per device class and microbatch, t >= max(FLOPs / peak compute,
                                            compulsory HBM bytes / peak bandwidth,
                                            link time)
  and a forward-only pipeline of S stages and M microbatches needs at least
  sum_s t_s + (M - 1) * max_s t_s.
Compulsory HBM bytes are the weights read once per step (zero for a fit-cache stage, whose
weights may stay in L2; planc's runtime re-reads them per microbatch, which a layer-major
schedule avoids), plus the stage's input and output (for a decode step: the whole KV cache);
intermediate activations are not counted because a fused kernel could keep them on chip. Per
microbatch these are averaged: the slowest stage does all M microbatches' work (M x its
average), and the others' fill and drain are at least one microbatch's share each.

Link time: a device's intra-node and inter-node links run concurrently, and so do the
inter-node links of every device of a node. Two necessary conditions, whichever is slower:
  - what one device must receive, over its two links together:
      all-reduce and reduce-scatter (n-1)/n x B (the minimum even with in-network reduction),
      all-gather (n-1) x B, all-to-all (n-1)/n x B, send/recv and ring passes B;
  - what must cross into the busiest node of the group (g of its n members), spread over
    that node's g inter-node links (a hierarchical collective moves only this share):
      all-reduce and reduce-scatter (n-g)/n x B / g, all-gather (n-g) x B / g,
      all-to-all (n-g)/n x B, a ring pass (n-g)/(n-1) x B / g per step, send/recv B / node.
B is what an implementation must exchange, not planc's own choice: for the head x head_dim
split, the cheapest exact exchange known, the smaller of the partial scores in the model dtype
(planc sums them in float32) and an all-to-all of the Q, K and V slices into a split by heads
and of the outputs back, (n-1)/n x 2 (Q + K) per device (V is as large as K, the output as Q).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cache

from planc.compiler.ir import Collective, DeviceClass, Mesh, PlacementGraph, TensorShard
from planc.layout.mesh import parts as mesh_parts
from planc.layout.schedule import (
    micro_rows,
    static_step_extra_kernels,
    static_step_fused,
    static_step_gate_up_silu,
    static_step_product_parts,
    static_step_qkv_split,
    static_step_reason,
    steady_step_rounds,
)
from planc.layout.strategies import attention_core


@dataclass(frozen=True)
class Rates:
    compute: int  # FLOP/s
    hbm: int  # B/s
    intra: int  # B/s per direction
    inter: int
    efficiency: Efficiency | None = None  # a calibrated device's; None: the defaults below


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak that real kernels reach, from measured ceilings, not fitted to plans:
      GEMM 683 (16384x16384x4096) to 798 (16384x4096x16384) of 989 TFLOP/s
      (shared/ceilings.md) -> 0.72; causal SDPA at 32k tokens 583 TFLOP/s counting causal
      FLOPs as half (benchmarks/results/h200x2_peers_run1.json) -> 0.59; device copy 4.18 of
      4.8 TB/s -> 0.87; all-reduce bus bandwidth 328 GB/s at 256 MB of the 450 GB/s link ->
      0.73; all-reduce latency 33 us. Eager dispatch and launch per op of the placement graph
      (each is two or three aten calls): measured by benchmarks/peers.py (`eager_op`)."""

    gemm: float = 0.72
    attention: float = 0.59
    # Ring attention's blocks run the same cuDNN kernel as SDPA (runtime/ring_attention.py), so
    # their FLOPs go at `attention`; the log-sum-exp merges are separate passes over the float32
    # accumulator, so a ring step's bytes add to its FLOP time instead of overlapping with it.
    hbm: float = 0.87
    link: float = 0.73
    collective_latency_s: float = 33e-6
    op_overhead_s: float = 20e-6
    # A decode step replayed as one CUDA graph (schedule.static_step_reason): no Python
    # launch, but each kernel still starts and drains after the one before it, microseconds
    # above its bytes at the copy rate whatever its size; the ops the step fuses into
    # another's kernel (schedule.static_step_fused) start none, the step's own kernels outside
    # the layer program (schedule.static_step_extra_kernels) one each. Measured kernel by kernel
    # (torch.profiler over graph replays; not fitted to any TPOT) on the Llama-3-8B shape cut
    # to 4 layers at batch 1 and 64 (benchmarks/results/h200_decode_profile_run6_l4.json):
    # a kernel's time less its bytes at `hbm` is 1.3-2.7 us for the elementwise kernels (2.0
    # on average) and 1.4-7.7 us for the layers' GEMMs (4.1: cuBLAS reads small weights below
    # the copy rate, and its split-K runs a second kernel), and the graph leaves 0.5 us between
    # kernels (span less busy time over the kernel count); the flash-decoding kernel reads the
    # batch-64 cache at 0.92 of the HBM rate after a GEMM-like start. Not in it: the lm_head's
    # cuBLAS GEMM ran 24-31 us above its bytes (about 0.3% of a 32-layer step). The check is
    # whole-model TPOTs of this step: run 13 measured the four one-GPU decode plans within
    # +0.4..+3.8% of what this model predicted before the run, run 16 (RoPE inside the
    # attention kernel) within +0.5..+3.0% (benchmarks/results/h200_decode_issue15.md, rounds
    # 3 and 4). The products the step runs as one Triton kernel with no split-K reduce after it
    # (static_step_triton_products) start as the elementwise kernels do, not as cuBLAS's GEMMs:
    # their time above their bytes at `hbm`, each timed alone in a CUDA graph at 1, 8 and 64 rows
    # with the tile the runtime runs (benchmarks/results/h200_decode_splitk_run23.json: q/k/v,
    # o_proj, down_proj; h200_decode_mlp_run19.json: gate/up with SiLU x up) is 1.0-3.6 us,
    # 2.0 on average, where cuBLAS's took 2.3-7.4 (4.7) in the same run. Not fitted to any TPOT;
    # runs 45-46's TPOTs were measured before this rule was added.
    graph_op_overhead_s: float = 2.5e-6
    graph_gemm_overhead_s: float = 4.6e-6
    decode_attention_hbm: float = 0.92
    # A collective inside the replayed graph has no host launch and no wait for the slowest
    # rank's Python: fitted (the one constant here that is) to the tensor-parallel 2 decode of
    # the Llama-3-8B shape at batch 64 on nvidia-h200-x2 (5.943 ms, 66 collectives a step;
    # benchmarks/results/h200x2_issue17.md), checked on batch 1, which it was not fitted to:
    # 3.780 ms predicted against 3.490 measured (+8.3%). Fitted before the Triton products were
    # priced as ops (static_step_triton_products), which re-prices those runs at -1.1% and
    # +4.4%; not refitted. Validated there only (two H200s over
    # NVLink): it also prices larger groups and other links, unmeasured. `collective_latency_s`
    # and planc calibrate's `latency` (a host-launched 4-byte all-reduce: 71 us on that
    # machine) price the eager steps' collectives.
    graph_collective_latency_s: float = 15e-6


def link_bytes(c: Collective) -> Fraction:
    n = c.group_size
    if c.op == "all_reduce":
        return Fraction(c.bytes * (n - 1), n)
    if c.op == "all_gather":
        return Fraction(c.bytes * (n - 1))
    if c.op in ("all_to_all", "reduce_scatter"):
        return Fraction(c.bytes * (n - 1), n)
    return Fraction(c.bytes)


def in_phase(name: str, phase: str) -> bool:
    """Ops named decode_* and collectives after decode:* belong to a decode step."""
    is_decode = name.startswith(("decode_", "decode:"))
    return is_decode if phase == "decode" else not is_decode


def phase_steps(graph: PlacementGraph, phase: str) -> int:
    return max(1, graph.generate - 1) if phase == "decode" else 1


def estimate_link_bytes(c: Collective) -> float:
    """Bytes per GPU as NCCL's ring algorithms move them (what bus bandwidth is measured
    against): an all-reduce is a reduce-scatter plus an all-gather, 2(n-1)/n x B. The bound
    uses link_bytes, the minimum any algorithm (in-network reduction included) needs."""
    if c.op == "all_reduce":
        return 2 * c.bytes * (c.group_size - 1) / c.group_size
    return float(link_bytes(c))


def _group_nodes(mesh: Mesh, axes: list[str]) -> tuple[int, int]:
    """(members, most members in one node) of rank 0's group over `axes`: the group's own
    devices must do its transfers, so any one group gives a sound bound."""
    sizes = tuple((a.name, a.size) for a in mesh.axes)
    return _group_nodes_of(sizes, tuple(axes), mesh.devices_per_node)


@cache
def _group_nodes_of(sizes: tuple[tuple[str, int], ...], axes: tuple[str, ...], per_node: int
                    ) -> tuple[int, int]:
    ranks = [0]
    stride = 1
    for name, size in reversed(sizes):  # row-major: the last axis varies fastest
        if name in axes:
            ranks = [r + i * stride for r in ranks for i in range(size)]
        stride *= size
    nodes: dict[int, int] = {}
    for r in ranks:
        nodes[r // max(1, per_node)] = nodes.get(r // max(1, per_node), 0) + 1
    return len(ranks), max(nodes.values())


def _elem_bytes(cls: DeviceClass) -> Fraction:
    """The model dtype's bytes, from the attention norm (4 FLOPs and 2 accesses per element)."""
    norm = next((o for o in cls.ops if o.name.endswith("attn_norm")), None)
    return Fraction(2 * norm.bytes, norm.flops) if norm and norm.flops else Fraction(2)


def _floor_bytes(c: Collective, cls: DeviceClass) -> Fraction:
    """What any exact implementation must exchange in place of c, per device per call."""
    if not c.after.endswith("attention_scores"):
        return Fraction(c.bytes)
    prefix = "decode_" if c.after.startswith("decode:") else ""
    rope = {o.name: o for o in cls.ops}
    q, k = rope.get(prefix + "rope_q"), rope.get(prefix + "rope_k")
    e = _elem_bytes(cls)
    scores = Fraction(c.bytes, 4) * e  # planc's float32 partial scores, in the model dtype
    if q is None or k is None:
        return scores
    # rope_q / rope_k do 3 FLOPs per element of the local Q / K slice (per microbatch call);
    # both exchanges move (n-1)/n of their payload, as the all-reduce's B does
    slices = Fraction(q.flops + k.flops, 3) * e
    return min(scores, 2 * slices)


def bound_link_bytes(c: Collective, cls: DeviceClass, mesh: Mesh) -> tuple[Fraction, Fraction]:
    """(bytes one device must receive, bytes each inter-node link of the busiest node must
    carry) for one call of c, as the module docstring derives them."""
    b = _floor_bytes(c, cls)
    n = c.group_size
    if c.op in ("all_reduce", "reduce_scatter", "all_to_all"):
        device = b * (n - 1) / n
    elif c.op == "all_gather":
        device = b * (n - 1)
    else:
        device = b
    members, g = _group_nodes(mesh, c.axes)
    if g >= members:
        return device, Fraction(0)
    outside = members - g
    if c.op in ("all_reduce", "reduce_scatter"):
        inter = b * outside / (members * g)
    elif c.op == "all_gather":
        inter = b * outside / g
    elif c.op == "all_to_all":
        inter = b * outside / members
    elif c.op == "ring_pass":
        inter = b * outside / (g * (members - 1))
    else:  # send/recv: the receiving node needs B, over any of its links
        inter = b / max(1, mesh.devices_per_node)
    return device, inter


def _class_parts(cls: DeviceClass, graph: PlacementGraph, rates: Rates, per_mb: bool,
                 phase: str = "prefill") -> tuple[Fraction, Fraction, Fraction]:
    """(compute, hbm, link) seconds of one microbatch (per_mb) or all of them, for the prefill
    (of the prompt, for a decode plan) or for one decode step."""
    nmb = graph.microbatches
    div = (nmb if per_mb else 1) * phase_steps(graph, phase)
    flops = Fraction(sum(o.flops * o.calls for o in cls.ops if in_phase(o.name, phase)), div)
    weights = cls.memory["weights"] - _lookup_only_bytes(cls, graph) if not cls.cache_resident \
        else 0
    # The weights are read once per step: planc's runtime reads them again for every
    # microbatch, but a schedule that runs each layer over all its microbatches need not.
    if phase == "decode":  # per step: the weights and the cache's filled positions
        kv = Fraction(cls.memory.get("kv_cache", 0))
        if graph.context + graph.generate:
            # the cache is allocated for context + generate positions; step t reads the
            # context + t filled ones, context + generate / 2 on average over the steps
            kv *= Fraction(2 * graph.context + graph.generate,
                           2 * (graph.context + graph.generate))
        hbm = (weights + kv) / (nmb if per_mb else 1)
    else:
        io = sum(b.bytes for b in cls.buffers if b.role == "io")
        hbm = Fraction(weights + io, nmb if per_mb else 1)
    device, inter = Fraction(0), Fraction(0)
    for c in cls.collectives:
        if not in_phase(c.after, phase):
            continue
        d, i = bound_link_bytes(c, cls, graph.mesh)
        device += d * c.calls
        inter += i * c.calls
    link = device / (rates.intra + rates.inter)
    if rates.inter:
        link = max(link, inter / rates.inter)
    return flops / rates.compute, hbm / rates.hbm, link / div


def _lookup_only_bytes(cls: DeviceClass, graph: PlacementGraph) -> int:
    """Bytes of an embedding table the class only looks tokens up in: a step reads the rows of
    its tokens, not the table (counted as nothing: a bound may only undercount). A table that
    is also the class's (tied) lm_head is read whole."""
    embed = sum(s.bytes for s in cls.shards if s.name == "embed_tokens.weight")
    if not embed:
        return 0
    own_head = any(s.name == "lm_head.weight" for s in cls.shards)
    is_last = cls.id == graph.classes[-1].id
    tied_head = graph.phase == "decode" and is_last and not own_head
    return 0 if tied_head else embed


def stage_parts(graph: PlacementGraph, rates: Rates, phase: str = "prefill"
                ) -> list[tuple[Fraction, Fraction, Fraction]]:
    """Per device class, the (compute, HBM, link) seconds of one microbatch at peak rates."""
    return [_class_parts(c, graph, rates, per_mb=True, phase=phase) for c in graph.classes]


def step_lower_bound(graph: PlacementGraph, rates: Rates, phase: str = "prefill") -> Fraction:
    """Seconds: no execution of this plan's forward step (the prompt's prefill, or one decode
    step with phase="decode") can be faster. A prefill's microbatches pass the stages in
    order: sum of stages + (microbatches - 1) x the slowest. Decode steps follow each other
    through the pipeline, so a step's time in the steady state is bounded by each stage's work
    on every microbatch (microbatches x the slowest) and by one microbatch's way through every
    stage before its next token can start there (the sum of stages)."""
    stages = [max(p) for p in stage_parts(graph, rates, phase)]
    if not stages:
        return Fraction(0)
    m = max(1, graph.microbatches)
    if phase == "decode":
        return max(sum(stages, Fraction(0)), m * max(stages))
    return sum(stages, Fraction(0)) + (m - 1) * max(stages)


def _op_time(name: str, flops: int, nbytes: int, rates: Rates, e: Efficiency) -> float:
    if name.startswith("attention_ring_step"):
        return flops / (rates.compute * e.attention) + nbytes / (rates.hbm * e.hbm) \
            + e.op_overhead_s
    if name.startswith("attention") and "cast" not in name:
        rate = rates.compute * e.attention
    elif name.endswith("_proj") or name in ("router", "experts"):
        rate = rates.compute * e.gemm
    else:  # norms, RoPE, SiLU, residual adds, dispatch copies: memory-bound
        rate = rates.compute * e.gemm
    return max(flops / rate, nbytes / (rates.hbm * e.hbm)) + e.op_overhead_s


def collective_estimate(col: Collective, rates: Rates, eff: Efficiency | None = None,
                        link: str | None = None) -> float:
    """Seconds of all of col's calls in a step, estimated: latency plus NCCL's ring bytes at
    the measured link efficiency; `link` prices it on another link than its own."""
    e = eff or Efficiency()
    bw = (rates.intra if (link or col.link) == "intra" else rates.inter) * e.link
    return (e.collective_latency_s + estimate_link_bytes(col) / bw) * col.calls


def step_efficiency(graph: PlacementGraph, rates: Rates, phase: str = "prefill",
                    eff: Efficiency | None = None) -> Efficiency:
    """The efficiencies step_estimate prices `phase` with (and so should anything that quotes
    a part of it): a calibrated device's or the defaults; a decode step replayed as one CUDA
    graph starts its kernels at graph_op_overhead_s and its collectives at
    graph_collective_latency_s."""
    e = eff or rates.efficiency or Efficiency()
    if phase == "decode" and static_decode(graph):
        e = replace(e, op_overhead_s=e.graph_op_overhead_s,
                    collective_latency_s=e.graph_collective_latency_s)
    return e


def step_estimate(graph: PlacementGraph, rates: Rates, eff: Efficiency | None = None,
                  phase: str = "prefill") -> float:
    """Seconds: an estimate of the forward step, not a bound.

    Per device class and microbatch: the sum over ops of their roofline time (FLOPs at the
    kernel's measured efficiency, or bytes at the measured copy bandwidth, whichever is
    larger) plus a launch overhead, plus each collective's latency and link time (no overlap
    assumed); then the schedule. The prefill's is GPipe's: sum of stages + (microbatches - 1)
    x the slowest. A decode step's is the rounds' (layout/schedule.steady_step_rounds): a
    stage runs at most one microbatch a round, in step with its neighbours' exchange, so a
    round lasts as long as the slowest stage that runs in it, and a step takes
    max(microbatches, stages) rounds (with fewer microbatches than stages, only some stages
    run in each round while the pipeline fills).
    """
    stages = stage_estimates(graph, rates, eff, phase)
    if not stages:
        return 0.0
    m = max(1, graph.microbatches)
    if phase == "decode":
        rounds = steady_step_rounds(m, len(stages))
        return sum(max(stages[k] for k in active) for active in rounds if active)
    return sum(stages) + (m - 1) * max(stages)


def stage_estimates(graph: PlacementGraph, rates: Rates, eff: Efficiency | None = None,
                    phase: str = "prefill") -> list[float]:
    """Seconds of one microbatch on each device class (a pipeline stage), estimated as
    step_estimate says, before the schedule."""
    e = step_efficiency(graph, rates, phase, eff)
    nmb = max(1, graph.microbatches) * phase_steps(graph, phase)
    static = phase == "decode" and static_decode(graph)
    qk_norm = qk_norm_of(graph)
    rows = micro_rows(graph.batch, mesh_parts(graph.mesh.shape, graph.splits.get("batch", [])),
                      graph.microbatches)
    fused = static_step_fused(qk_norm, static_step_gate_up_silu(rows, dense_mlp_of(graph))
                              ) if static else frozenset()
    triton = static_step_triton_products(graph, rows) if static else frozenset()
    stages = []
    for c in graph.classes:
        t = 0.0
        for o in c.ops:
            if not in_phase(o.name, phase):
                continue
            name = o.name.removeprefix("decode_")
            if static and name.startswith("attention"):  # the cache read by flash-decoding
                op_t = max(o.flops / (rates.compute * e.attention),
                           o.bytes / (rates.hbm * e.decode_attention_hbm)
                           ) + e.graph_gemm_overhead_s
            elif name in fused:  # inside another op's kernel
                op_t = _op_time(name, o.flops, o.bytes, rates, replace(e, op_overhead_s=0.0))
            elif name in triton:  # one Triton kernel, no split-K reduce: an op's start
                op_t = _op_time(name, o.flops, o.bytes, rates, e)
            elif static and (name.endswith("_proj") or name == "lm_head"):
                op_t = _op_time(name, o.flops, o.bytes, rates,
                                replace(e, op_overhead_s=e.graph_gemm_overhead_s))
            else:
                op_t = _op_time(name, o.flops, o.bytes, rates, e)
            t += op_t * o.calls / nmb
        if static:  # the step's kernels outside the layer program, where the stage is
            vocab_parts = mesh_parts(graph.mesh.shape, graph.splits.get("vocab", []))
            t += static_step_extra_kernels(vocab_parts, qk_norm, c is graph.classes[0],
                                           c is graph.classes[-1]) * e.op_overhead_s
        for col in c.collectives:
            if in_phase(col.after, phase):
                t += collective_estimate(col, rates, e) / nmb
        stages.append(t)
    return stages


def qk_norm_of(graph: PlacementGraph) -> bool:
    """Whether the model norms q and k per head (Qwen3: its layers hold q_norm weights)."""
    return any(s.name.endswith("q_norm.weight") for c in graph.classes for s in c.shards)


def dense_mlp_of(graph: PlacementGraph) -> bool:
    """Whether the MLP's gate weights are plain (not int8 or 2:4 compressed)."""
    gates = [s for c in graph.classes for s in c.shards if s.name.endswith("gate_proj.weight")]
    return bool(gates) and all(s.format == "dense" for s in gates)


def static_step_triton_products(graph: PlacementGraph, rows: int) -> frozenset[str]:
    """The layer program's products that the static step runs as one Triton kernel with no
    split-K reduce kernel after it (backends/torch/runtime/decode_products), by the rules
    decode_step.StaticStep picks them by: gate/up with SiLU x up (schedule
    .static_step_gate_up_silu); q/k/v split where static_step_qkv_split says (RoPE inside
    the attention kernel, a plain unbiased weight); o_proj and down_proj (down only beside
    gate/up's kernel) split where static_step_product_parts says and not all-reduced (no
    tensor split of heads / ffn); each rule bounds the rows (schedule.SPLIT_KERNEL_MAX_ROWS).
    Only plain (dense) weights."""
    shards = [s for c in graph.classes for s in c.shards]

    def plain(suffix: str) -> TensorShard | None:
        mine = [s for s in shards if s.name.endswith(suffix)]
        return mine[0] if mine and all(s.format == "dense" for s in mine) else None

    def split(dim: str) -> bool:
        return mesh_parts(graph.mesh.shape, graph.splits.get(dim, [])) > 1

    out = set()
    gate_up = static_step_gate_up_silu(rows, dense_mlp_of(graph))
    if gate_up:
        out.add("gate_up_proj")
    plain_qkv = plain("q_proj.weight") is not None and not any(
        s.name.endswith("q_proj.bias") for s in shards)
    if static_step_qkv_split(rows, not qk_norm_of(graph), plain_qkv) > 1:
        out.add("qkv_proj")
    o = plain("o_proj.weight")
    if o is not None and not split("heads") \
            and static_step_product_parts("o_proj", rows, o.local_shape[1]) > 1:
        out.add("o_proj")
    down = plain("down_proj.weight")
    if gate_up and down is not None and not split("ffn") \
            and static_step_product_parts("down_proj", rows, down.local_shape[1]) > 1:
        out.add("down_proj")
    return frozenset(out)


def static_decode(graph: PlacementGraph) -> bool:
    """Whether the graph's decode steps run as CUDA graphs (the rule of
    planc/layout/schedule.static_step_reason, read off the graph; `planc run` is greedy)."""
    core = attention_core(graph.splits, graph.attention)
    return static_step_reason(core, False) is None


def rates_of(plan) -> Rates:  # type: ignore[no-untyped-def]
    d = plan.cluster.device
    return Rates(d.compute, d.bandwidth, plan.cluster.intra, plan.cluster.inter,
                 calibrated_efficiency(d, plan.cluster.intra))


def calibrated_efficiency(d, intra: int) -> Efficiency | None:  # type: ignore[no-untyped-def]
    """A calibrated device's measured rates as fractions of its datasheet peaks (the one place
    estimates read `planc calibrate`'s keys); what it did not measure keeps the default."""
    if all(x is None for x in (d.gemm, d.attention, d.hbm, d.allreduce, d.latency)):
        return None
    e = Efficiency()
    return replace(
        e, gemm=d.gemm / d.compute if d.gemm else e.gemm,
        attention=d.attention / d.compute if d.attention else e.attention,
        hbm=d.hbm / d.bandwidth if d.hbm else e.hbm,
        link=d.allreduce / intra if d.allreduce else e.link,
        collective_latency_s=float(d.latency) if d.latency else e.collective_latency_s)
