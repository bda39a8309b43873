"""check_structure: cheap checks that need no solver, and the role each mesh axis plays.

A mesh axis carries one parallel strategy (planc/layout/strategies.py). Which model dimensions
may share an axis:
  tp  heads, kv_heads, ffn (Megatron tensor parallel; ffn may also ride on hd axes), vocab
      (vocab-parallel embedding and lm_head: tokens are the same on every device of the axis)
  hd  head_dim (seed 001's intra-head split), optionally with ffn
  pp  layers, alone
  sp  seq (ring or gather attention), alone
  ep  experts, with batch (attention is data parallel over the expert axis, tokens travel by
      all-to-all) and optionally ffn; or experts on the tensor-parallel axis of heads (tokens
      are replicated there, each device runs its experts and the outputs are all-reduced)
  dp  batch, alone
Anything else on one axis (layers with heads, seq with batch ...) has no runtime meaning and is
rejected with the axis named.
"""

from __future__ import annotations

from planc.compiler.spec import PlanSpec
from planc.diagnostics import Diagnostics, Related
from planc.layout.strategies import ROLE_OF_DIM, compatible


def axis_roles(plan: PlanSpec) -> dict[str, str]:
    """Role per mesh axis ("idle" when nothing is sharded over it). Assumes a checked plan."""
    dims_on: dict[str, list[str]] = {a: [] for a, _ in plan.mesh}
    for sh in plan.shards:
        for a in sh.axes:
            dims_on.setdefault(a, []).extend(sh.dims)
    roles: dict[str, str] = {}
    for a, dims in dims_on.items():
        rs = {ROLE_OF_DIM[d] for d in dims}
        if not rs:
            roles[a] = "idle"
        elif "ep" in rs:
            roles[a] = "ep"
        elif "hd" in rs:
            roles[a] = "hd"
        else:
            roles[a] = next(iter(sorted(rs)))
    return roles


def check_structure(plan: PlanSpec, diags: Diagnostics) -> bool:
    """Report structural problems; True when the plan can be lowered."""
    before = len([d for d in diags.items if d.severity == "error"])
    dims_on: dict[str, list[tuple[str, object]]] = {a: [] for a, _ in plan.mesh}
    for sh in plan.shards:
        for a, asp in zip(sh.axes, sh.axis_spans):
            for d, dsp in zip(sh.dims, sh.dim_spans):
                dims_on.setdefault(a, []).append((d, dsp))
    for a, entries in dims_on.items():
        roles = frozenset(ROLE_OF_DIM[d] for d, _ in entries)
        dims = {d for d, _ in entries}
        # Which roles may share an axis is the strategy registry's (planc/layout/strategies.py);
        # one refinement: heads and head_dim on one axis would split a head twice.
        if not roles or (compatible(roles) and not ({"heads", "kv_heads"} & dims
                                                    and "head_dim" in dims)):
            continue
        names = sorted({d for d, _ in entries})
        first, *rest = entries
        diags.error(
            "E050", f"axis {a!r} carries incompatible dimensions: {', '.join(names)}",
            rest[0][1] if rest else first[1],  # type: ignore[arg-type]
            "an axis carries one strategy: tensor parallel (heads, kv_heads, ffn, vocab), "
            "pipeline (layers), sequence (seq), experts (+ batch), data (batch); use another axis",
            tuple(Related(sp, f"{d} over {a}") for d, sp in entries[:-1]),  # type: ignore[arg-type]
        )
    for a, size in plan.mesh:
        if not dims_on.get(a) and size != 1:
            diags.warning("W051", f"mesh axis {a!r} carries no dimension: its {size} devices "
                          "all repeat the same work", plan.axis_spans.get(a),
                          f"shard something over {a} (e.g. `shard batch over {a}`) or drop it")
    heads = plan.shard_of("heads")
    kv = plan.shard_of("kv_heads")
    if kv is not None and heads is not None and kv.axes != heads.axes:
        diags.error("E052", "kv_heads must be split over the same axes as heads "
                    f"(heads over {', '.join(heads.axes)}, kv_heads over {', '.join(kv.axes)})",
                    kv.span, "put them on one line: `shard heads, kv_heads over ...`",
                    (Related(heads.span, "heads sharded here"),) if heads.span else ())
    if kv is not None and heads is None:
        diags.error("E052", "kv_heads is split but heads is not", kv.span,
                    "shard heads and kv_heads together")
    ex = plan.shard_of("experts")
    if plan.model.arch == "llama" and ex is not None:
        diags.error("E053", "`shard experts` needs a mixtral model", ex.span,
                    f"model {plan.model.name!r} has arch llama and no experts")
    voc = plan.shard_of("vocab")
    if voc is not None and not plan.model.vocab:
        span = next((sp for d, sp in zip(voc.dims, voc.dim_spans) if d == "vocab"), voc.span)
        diags.error("E057", "`shard vocab` needs a model with a vocabulary",
                    span,  # type: ignore[arg-type]
                    f"model {plan.model.name!r} has no `vocab` (it is fed embeddings): add "
                    "`vocab N` to it, or drop vocab from the line",
                    (Related(plan.model.span, "model declared here"),) if plan.model.span else ())
    if ex is not None and not set(ex.axes) <= set(plan.axes_of("heads")):
        b = plan.shard_of("batch")
        if b is None or not set(ex.axes) <= set(b.axes):
            diags.error("E054", "expert parallelism needs the batch split over the expert axes "
                        "too (attention is data parallel over them)", ex.span,
                        f"add `shard batch over {', '.join(ex.axes)}`")
    hd = plan.shard_of("head_dim")
    seq = plan.shard_of("seq")
    if hd is not None and seq is not None and plan.degree("head_dim") > 1 and \
            plan.degree("seq") > 1:
        diags.error("E056", "head_dim and seq cannot both be split: no runtime block does both "
                    "(the partial scores of a head would need every sequence chunk)", hd.span,
                    "choose one: seed 001's head x head_dim split, or seed 002's ring",
                    (Related(seq.span, "seq split here"),) if seq.span else ())
    lay = plan.shard_of("layers")
    if lay is not None and len(lay.axes) != 1:
        diags.error("E055", "layers can be split over one axis only", lay.span,
                    "use one pipeline axis")
    seqs = plan.shard_of("seq")
    if seqs is not None and len(seqs.axes) != 1:
        diags.error("E055", "seq can be split over one axis only (one ring)", seqs.span,
                    "use one sequence axis")
    after = len([d for d in diags.items if d.severity == "error"])
    return after == before
