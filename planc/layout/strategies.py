"""The strategy registry: one record per parallel strategy.

A record says which model dimensions the strategy splits, the role its mesh axes play, which
other roles may share an axis with it, what it communicates, which memory terms it adds and
which runtime core runs it. check_structure (axis roles and sharing, hence lower's axis roles),
verifier/encode.py (the divisibility obligations), compiler/lower.py and decode.py (the
collectives and the memory terms of the placement graph), render/tables.py (show's strategy
names) and the runtime (backends/torch/runtime/cores.py) read these records;
docs/architecture.md says how to add one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

# The points of a layer (and of a stage) a collective follows, in the order the placement graph
# lists a device class's collectives: the embedding's, the attention block's (o_proj's
# all-reduce first), the MLP's, the stage's send; then a decode step's own.
POINTS = ("embed_tokens", "o_proj", "attention_scores", "k_proj", "router", "experts",
          "weighted_sum", "down_proj", "stage_output", "flash_decode_merge", "lm_head")
# What a collective's `when` may name: facts about the plan and the device class, true or not
# (compiler/lower.py stage_facts): the sequence attention, the MLP (dense, or the MoE mode of
# planc/layout/moe.py), the stage holding the embedding (the first, with a vocabulary) or the
# lm_head (the last, with a vocabulary), and a stage that sends to the next (every but the last).
FACTS = ("attention:local", "attention:ring", "attention:gather", "mlp:dense", "mlp:local",
         "mlp:all_to_all", "mlp:replicated", "embedding", "lm_head", "sends")
CALLS = ("layer", "microbatch", "hop")


@dataclass(frozen=True)
class Comm:
    """One collective a strategy issues, as the placement graph lists it (ir.Collective).

    compiler/lower.py emits it for every device class where one of `when` holds and its group
    (the mesh axes of the dimensions `over`) has more than one device: `size` names its bytes
    per call (cost/memory.MESSAGE_BYTES, from the layer's LocalDims), `calls` how often it runs
    per step: once per layer and microbatch ("layer"), once per microbatch ("microbatch"), or
    group size - 1 times per layer and microbatch ("hop", a ring). `phase` "prefill": the
    prompt's forward, which a decode step repeats with one step's payload (`step_copy`) unless
    the step has its own (a "step" entry: a decode step only, sized from the step's LocalDims).
    """

    op: str  # all_reduce, all_gather, all_to_all, ring_pass, send_recv
    after: str  # one of POINTS
    over: tuple[str, ...]  # model dimensions whose axes form the group (concatenated)
    size: str  # a key of cost/memory.MESSAGE_BYTES
    calls: str = "layer"  # one of CALLS
    when: tuple[str, ...] = ()  # any one of these FACTS; () always
    mesh_order: bool = False  # the group's axes deduplicated in mesh order (not `over` order)
    phase: str = "prefill"  # prefill (and a decode step's copy), or step (a decode step only)
    step_copy: bool = True  # a decode step repeats this prefill collective
    # which decode steps run it (its copy, or its step entry): None either, True only a step at
    # static addresses (layout/schedule.static_step_reason), False only an eager one
    static_step: bool | None = None


@dataclass(frozen=True)
class Memory:
    """One memory term a strategy adds: the key of its function in planc/cost/memory.py.

    A key of ATTENTION_TERMS there is an attention core's ops and buffers in one layer (the
    layer's common part and its MLP are the model's; a layer whose strategies name no attention
    core runs "heads"); a key of STAGE_TERMS is what a stage holds beside its layers.
    compiler/splits.plan_memory_terms picks the entries of the strategies that split a dimension
    (degree > 1) where one of `when` holds, for a phase: lower.py's layer and stages (prefill),
    decode.py's step.
    """

    key: str
    when: tuple[str, ...] = ()  # any one of these FACTS (of the attention or the MLP); () always
    phases: tuple[str, ...] = ("prefill", "step")  # a prefill's layer, a decode step's layer


@dataclass(frozen=True)
class Strategy:
    name: str
    role: str  # the role of a mesh axis that carries it (Axis.role in the placement graph)
    dims: tuple[str, ...]  # model dimensions it splits
    divides: tuple[tuple[str, str], ...]  # (dim, obligation code): dim divisible by its split
    shares_axis_with: tuple[str, ...]  # other roles that may ride on the same axis
    collectives: tuple[Comm, ...]  # what it sends, per layer and microbatch (lower.py emits them)
    # the terms it adds to the memory model (what it shrinks follows from the layer's LocalDims
    # and shards, every split dimension's degree)
    memory: tuple[Memory, ...]
    core: str  # its runtime core (backends/torch/runtime/cores.py); "" when it needs none


# Collectives two strategies share (either one splitting its dimensions needs it; one call when
# both do): the all-reduce of o_proj's partial sums (heads, head_dim), and of the MoE block's
# weighted sum when tokens are the same on every device of the group (experts, ffn).
O_PROJ = Comm("all_reduce", "o_proj", ("heads", "head_dim"), "residual")
WEIGHTED_SUM = Comm("all_reduce", "weighted_sum", ("experts", "ffn"), "residual",
                    when=("mlp:replicated", "mlp:local"), mesh_order=True)

STRATEGIES: tuple[Strategy, ...] = (
    # vocab: the embedding and lm_head rows, padded when the vocabulary does not divide (no
    # divisibility obligation; compiler/vocab.py)
    Strategy("tensor", "tp", ("heads", "kv_heads", "ffn", "vocab"),
             (("heads", "V201"), ("kv_heads", "V202"), ("ffn", "V204")), ("hd", "ep"),
             (Comm("all_reduce", "embed_tokens", ("vocab",), "residual", "microbatch",
                   ("embedding",)),  # a vocab-parallel lookup: each row found on one part
              O_PROJ, WEIGHTED_SUM,
              Comm("all_reduce", "down_proj", ("ffn",), "residual", when=("mlp:dense",)),
              # greedy over a split vocabulary: each part's (max logit, its token) per row
              Comm("all_gather", "lm_head", ("vocab",), "token_choice", "microbatch",
                   ("lm_head",), phase="step")),
             (), "heads"),
    Strategy("head_dim", "hd", ("head_dim",), (("head_dim", "V203"),), ("tp",),
             (O_PROJ,  # and the partial scores of the head_dim slices
              Comm("all_reduce", "attention_scores", ("head_dim",), "scores")),
             # the float32 partial scores and the probabilities, materialised
             (Memory("head_dim"),), "head_dim"),
    Strategy("pipeline", "pp", ("layers",), (("layers", "V208"),), (),
             (Comm("send_recv", "stage_output", ("layers",), "residual", "microbatch",
                   ("sends",)),
              # a decode step's tokens, sent back from the last stage to the first
              # (runtime/pipeline.generate: the exchange that ends the last stage's step)
              Comm("send_recv", "lm_head", ("layers",), "token_ids", "microbatch",
                   ("lm_head",), phase="step")),
             (Memory("send_recv"),), ""),  # the receive posted ahead and the send in flight
    Strategy("sequence", "sp", ("seq",), (("seq", "V207"),), (),
             (Comm("ring_pass", "k_proj", ("seq",), "kv", "hop", ("attention:ring",),
                   step_copy=False),
              Comm("all_gather", "k_proj", ("seq",), "kv", when=("attention:gather",),
                   step_copy=False),
              # a decode step attends over each rank's chunk of the cache: the partial outputs
              # and log-sum-exps are all-gathered and merged (flash-decoding)
              Comm("all_gather", "flash_decode_merge", ("seq",), "partials", phase="step")),
             # K/V blocks in flight, or the gathered K/V; a decode step's partials
             (Memory("ring", ("attention:ring",), ("prefill",)),
              Memory("gather", ("attention:gather",), ("prefill",)),
              Memory("flash_decode", phases=("step",))),
             "ring"),  # or "gather": the plan says
    Strategy("expert", "ep", ("experts",), (("experts", "V205"),), ("dp", "tp"),
             (Comm("all_to_all", "router", ("experts",), "routed_copies",
                   when=("mlp:all_to_all",), static_step=False),  # dispatch
              Comm("all_to_all", "experts", ("experts",), "routed_copies",
                   when=("mlp:all_to_all",), static_step=False),  # combine
              # the ffn axes are the tensor-parallel group inside each expert
              Comm("all_reduce", "experts", ("ffn",), "routed_rows", when=("mlp:all_to_all",),
                   static_step=False),
              WEIGHTED_SUM,
              # a static decode step's block (runtime/moe.moe_static): the ep group's rows and
              # their dense gate rows gathered, its float32 partials summed, then the ffn
              # slices' partials of the rank's rows
              Comm("all_gather", "router", ("experts",), "residual", when=("mlp:all_to_all",),
                   phase="step", static_step=True),
              Comm("all_gather", "router", ("experts",), "dense_gates",
                   when=("mlp:all_to_all",), phase="step", static_step=True),
              Comm("all_reduce", "weighted_sum", ("experts",), "static_moe_partials",
                   when=("mlp:all_to_all",), phase="step", static_step=True),
              Comm("all_reduce", "weighted_sum", ("ffn",), "residual",
                   when=("mlp:all_to_all",), phase="step", static_step=True)),
             (), "moe"),  # its buffers are the MoE mode's (cost/memory.py MOE_TERMS)
    Strategy("data", "dp", ("batch",), (("batch", "V206"),), ("ep",), (), (), ""),
)
ROLE_OF_DIM: dict[str, str] = {d: s.role for s in STRATEGIES for d in s.dims}
# Every divisibility obligation, in code order (the order reports list them).
DIVISIBILITY: tuple[tuple[str, str], ...] = tuple(
    sorted(((code, dim) for s in STRATEGIES for dim, code in s.divides)))


def collectives(split: Collection[str], phase: str = "prefill") -> tuple[Comm, ...]:
    """The collectives of the strategies that split any of these dimensions, for one phase, in
    the order of their POINTS (then of the records); a collective two of them share, once."""
    out: list[Comm] = []
    for s in STRATEGIES:
        if set(s.dims) & set(split):
            out += [c for c in s.collectives if c.phase == phase and c not in out]
    return tuple(sorted(out, key=lambda c: POINTS.index(c.after)))


def memory_terms(split: Collection[str], facts: Collection[str], phase: str = "prefill"
                 ) -> tuple[str, ...]:
    """The keys of the memory terms (Memory) of the strategies that split any of these
    dimensions, whose condition holds among `facts`, for one phase, in record order, once each."""
    out: list[str] = []
    for s in STRATEGIES:
        if set(s.dims) & set(split):
            out += [t.key for t in s.memory if phase in t.phases and t.key not in out
                    and (not t.when or set(t.when) & set(facts))]
    return tuple(out)


def step_copy(op: str, after: str, static: bool = False) -> bool:
    """Does a decode step (`static`: at static addresses) repeat the prefill collective `op`
    after `after` (Comm.step_copy, Comm.static_step)?"""
    return all(c.step_copy and c.static_step in (None, static) for s in STRATEGIES
               for c in s.collectives if (c.op, c.after) == (op, after) and c.phase == "prefill")


def runs_in_step(c: Comm, static: bool) -> bool:
    """Does a decode step (`static`: at static addresses) run the step collective c?"""
    return c.static_step in (None, static)


def compatible(roles: frozenset[str]) -> bool:
    """May these roles share one mesh axis? (Finer rules: check_structure.)"""
    by_role = {s.role: s for s in STRATEGIES}
    return all(set(roles) - {r} <= set(by_role[r].shares_axis_with) for r in roles)


def attention_core(splits: Mapping[str, Sequence[str]], attention: str) -> str:
    """The attention core a rank runs: head x head_dim, ring / gather over a sequence split,
    or plain heads (tensor parallel or none)."""
    if splits.get("head_dim"):
        return "head_dim"
    if splits.get("seq"):
        if attention not in ("ring", "gather"):
            raise ValueError("splits['seq'] needs attention 'ring' or 'gather', not 'local'")
        return attention
    return "heads"
