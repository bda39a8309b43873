"""Mixtral / Qwen3-MoE MoE MLP block (seed 004): RMSNorm, router, experts local / expert parallel /
replicated-token, per the RunConfig's splits (planc/layout/moe.py), over runtime/moe.py.

- "all_to_all" (`shard experts, batch over ep`, optionally `ffn over tp` beside `heads over
  tp`): each rank of the ep group holds its own tokens and experts [r*E/ep, (r+1)*E/ep), r its
  rank in the group; moe.moe_ep dispatches rows by all_to_all and, with ffn split, each
  expert's ffn slice is the rank's tp part and one all_reduce over tp completes the down
  projections.
- "replicated" (experts and/or ffn over axes where tokens are the same, e.g. the TP 8 x PP 2
  baseline's `heads, kv_heads, experts over tp`: 2 of 16 experts per device): each rank adds its
  experts' (ffn slices') contributions, one all_reduce over the experts x ffn ranks.
- "local": every expert whole on every rank (no experts or ffn split).
The router [E, H] is replicated and never compressed (the compiler counts it dense); expert
linears are "mlp" linears: int8 and 2:4 apply (compress.make_linear), a tp-sliced down gets the
int8 scales of its whole row. Checkpoints: the fused names transformers 5.23 holds in memory
(`mlp.experts.gate_up_proj` [E, 2F, H], `mlp.experts.down_proj` [E, H, F]; what
older planc random checkpoints hold) or the per-expert names save_pretrained and published
checkpoints use (Mixtral's `block_sparse_moe.experts.{e}.w1/w3/w2`, Qwen3-MoE's
`mlp.experts.{e}.gate_proj/up_proj/down_proj`); either is read by slices.

Memory: planc/cost/memory.py's `moe_terms` (router_probs; MOE_TERMS by mode, all_to_all:
dispatch_send, dispatch_recv, grouped, expert_out, combine_back, contrib_f32, out_f32;
replicated / local: gathered_rows, expert_out, contrib_f32, out_f32; expert_gate_up and
expert_down per expert), in that op order; what this block allocates beyond them is listed
there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.distributed as dist
from torch import Tensor, nn

from planc.backends.torch.runtime import moe
from planc.backends.torch.runtime.layers import RMSNorm, load_norm, make_linear
from planc.backends.torch.runtime.moe_io import (
    fused_expert_names,
    legacy_expert_names,
    per_expert_scheme,
    router_names,
)
from planc.layout.moe import expert_range, ffn_range, moe_mode, stacked_experts

if TYPE_CHECKING:
    from planc.backends.torch.runtime.dist import RankContext
    from planc.backends.torch.weights import ShardReader


class MoeMLP(nn.Module):
    """Pre-norm sparse MoE block on x [b, s, H]; returns its (reduced) output [b, s, H]."""

    router: Tensor

    def __init__(
        self,
        norm: RMSNorm,
        router: Tensor,
        experts: moe.ExpertWeights,
        top_k: int,
        mode: str,
        groups: tuple[dist.ProcessGroup | None, dist.ProcessGroup | None],
        norm_topk: bool = True,
    ) -> None:
        super().__init__()
        self.norm = norm
        self.register_buffer("router", router)
        self.experts = experts
        # The expert weights as buffers (stacked) or children (compressed linears), so
        # weight_bytes sees them; the stacked experts' lists hold views of those buffers.
        linears = [w for ws in (experts.gate, experts.up, experts.down) for w in ws]
        self.linears = nn.ModuleList(w for w in linears if isinstance(w, nn.Module))
        if experts.gate_up is not None:
            self.register_buffer("gate_up", experts.gate_up)
            self.register_buffer("down_stack", experts.down_stack)
        self.top_k, self.mode, self.norm_topk = top_k, mode, norm_topk
        self.main_group, self.tp_group = groups  # ep or replicated group; tp inside experts

    def forward(self, x: Tensor) -> Tensor:
        b, s, h = x.shape
        router, experts, k = self.router, self.experts, self.top_k
        # The norm output is passed as a temporary, not bound here: moe_ep frees it as soon as
        # the dispatch rows are gathered from it.
        renorm = self.norm_topk
        if self.mode == "all_to_all":
            out = moe.moe_ep(self.norm(x).view(b * s, h), router, experts, k, self.main_group,
                             self.tp_group, norm_topk=renorm)  # fmt: skip
        elif self.mode == "replicated":
            out = moe.moe_replicated(
                self.norm(x).view(b * s, h), router, experts, k, self.main_group, norm_topk=renorm
            )
        else:
            out = moe.moe_local(self.norm(x).view(b * s, h), router, experts, k, norm_topk=renorm)
        return out.view(b, s, h)

    def static_from_normed(self, h: Tensor) -> Tensor:
        """The block's (reduced) output for its normed input h [b, s, H], at static shapes
        (moe.moe_static): what the static decode step runs."""
        b, s, hid = h.shape
        group = self.main_group
        tp = self.tp_group if self.mode == "all_to_all" else None
        out = moe.moe_static(h.reshape(b * s, hid), self.router, self.experts, self.top_k,
                             self.mode, group, tp, None, norm_topk=self.norm_topk)
        return out.view(b, s, hid)


def load_experts(
    ctx: RankContext,
    reader: ShardReader,
    layer: int,
    ep: tuple[int, int],
    tp: tuple[int, int],
) -> tuple[list[Tensor], list[Tensor], list[Tensor], int]:
    """(gate, up, down) weights of this rank's experts (each its ffn slice) and the first
    expert's global id; ep / tp = (parts, this rank's part)."""
    m = ctx.cfg.model
    first, last = expert_range(m.experts, *ep)
    lo, hi = ffn_range(m.ffn, *tp)
    gates, ups, downs = [], [], []
    # The checkpoint's own names say which layout it has (whichever family wrote it).
    scheme = per_expert_scheme(layer, first, "", reader.has)
    if scheme is not None:
        for e in range(first, last):
            names = legacy_expert_names(layer, e, "", scheme)
            gates.append(reader.rows(names["gate"], range(lo, hi), (m.ffn, m.hidden)))
            ups.append(reader.rows(names["up"], range(lo, hi), (m.ffn, m.hidden)))
            downs.append(reader.cols(names["down"], range(lo, hi), (m.hidden, m.ffn)))
    else:
        names = fused_expert_names(layer, prefix="")
        gu_shape, down_shape = (m.experts, 2 * m.ffn, m.hidden), (m.experts, m.hidden, m.ffn)
        block, full = slice(first, last), slice(None)
        gate_up = names["gate_up"]  # gate rows first, then up rows
        gates = list(reader.part(gate_up, gu_shape, (block, slice(lo, hi), full)))
        ups = list(reader.part(gate_up, gu_shape, (block, slice(m.ffn + lo, m.ffn + hi), full)))
        downs = list(reader.part(names["down"], down_shape, (block, full, slice(lo, hi))))
    return gates, ups, downs, first


def make_mlp(ctx: RankContext, reader: ShardReader, layer: int) -> MoeMLP:
    """Layer `layer`'s MoE block for this rank (see the module docstring)."""
    lay, m = ctx.layout, ctx.cfg.model
    if m.experts < 1:
        raise ValueError(f"arch mixtral needs experts >= 1, got {m.experts}")
    mode = moe_mode(lay.axes("experts"), lay.axes("ffn"), lay.axes("batch") + lay.axes("seq"))
    token_axes = set(lay.axes("batch")) | set(lay.axes("seq"))
    if set(lay.axes("ffn")) & (token_axes | set(lay.axes("experts"))):
        raise ValueError(
            f"splits['ffn'] = {lay.axes('ffn')} shares an axis with experts or batch/seq: the ffn "
            "slices of one expert must sit on ranks that hold the same tokens and experts"
        )
    ffn_group = ctx.dim_group("ffn")
    main = ctx.dim_group("experts")
    if mode == "all_to_all" and main is not None:
        # Expert blocks follow the rank's place in the ep group: what moe_ep's all_to_all
        # assumes whatever the order of the axes in splits["experts"].
        ep = (dist.get_world_size(main), dist.get_group_rank(main, ctx.rank))
    else:  # also ep over axes of size 1: then tokens are the same on the ffn ranks
        main = ctx.group(tuple(dict.fromkeys(lay.axes("experts") + lay.axes("ffn"))))
        mode = "local" if main is None else "replicated"
        ep = (lay.parts("experts"), lay.part("experts"))
    tp = (lay.parts("ffn"), lay.part("ffn"))
    gates, ups, downs, first = load_experts(ctx, reader, layer, ep, tp)
    legacy_router, fused_router = router_names(layer, prefix="")
    router_name = legacy_router if reader.has(legacy_router) else fused_router
    router = reader.place(reader.full(router_name, (m.experts, m.hidden)))
    if stacked_experts(ctx.cfg.compress_int8, ctx.cfg.compress_mlp_2_4):
        experts = moe.stack_experts(moe.ExpertWeights(first, gates, ups, downs),  # type: ignore[arg-type]
                                    reader.dtype, reader.device)
    else:
        experts = moe.ExpertWeights(
            first,
            [make_linear(ctx, reader.place(w), "mlp") for w in gates],
            [make_linear(ctx, reader.place(w), "mlp") for w in ups],
            [make_linear(ctx, reader.place(w), "mlp", ffn_group) for w in downs],
        )
    return MoeMLP(
        load_norm(ctx, reader, f"layers.{layer}.post_attention_layernorm.weight"),
        router,
        experts,
        m.top_k,
        mode,
        (main, ffn_group if mode == "all_to_all" else None),
        m.features.norm_topk,
    )
