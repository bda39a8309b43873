"""Mixtral sparse MoE block, local and distributed: routing, expert MLPs, expert-parallel
all-to-all dispatch/combine, and loading one rank's experts from a safetensors checkpoint.

Semantics are those of transformers 5.x `MixtralSparseMoeBlock` and `Qwen3MoeSparseMoeBlock`
(inference): router logits = x @ gate.T in x's dtype, softmax in float32, top-k, the k weights
renormalised to sum to 1 (Mixtral; Qwen3-MoE only with norm_topk_prob, else kept as they are);
expert e computes down(silu(gate(x)) * up(x)) (w2(silu(w1 x) * w3 x) in Mistral's names); the
output is the weighted sum over the k chosen experts. Inference only (no autograd through the
collectives). Every function takes local 2-D tokens [T, H] and torch.distributed groups.

Three ways to run the block, see planc/layout/moe.py:
- `moe_local`: all experts on this rank (ep = 1).
- `moe_ep` (`shard experts over A`, attention data-parallel over A, so each rank of the ep group
  has its own tokens): route locally; exchange per-expert counts (all_to_all_single); send each
  (token, expert) row to the expert's owner (all_to_all_single, variable splits, dropless);
  the owner groups the rows it received by local expert and runs each expert; the results go
  back on the reverse all_to_all_single; the sender puts them in (token, slot) order and takes
  the weighted sum. With `tp_group` (mesh ep x tp, `ffn over tp`, attention tensor-parallel over
  tp so the ranks of a tp group hold the same tokens): every tp rank does the same routing and
  the same all-to-all over its own ep group (the ranks with its tp coordinate), runs its ffn
  slice of each local expert (column-parallel gate/up, row-parallel down) giving partial sums,
  and, because the combine is linear, one all_reduce over tp of the final [T, H] output
  completes them (the same all_reduce a Megatron MLP ends with).
- `moe_replicated` (tokens identical on every rank of `group`, e.g. seed 004's baseline: TP=8
  attention and 16 experts / 8 GPUs = 2 experts per GPU over the same axis): each rank adds the
  contributions of the experts (and ffn slices) it holds; one all_reduce over the group.
Bytes sent per call: moe_io.ep_traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open

from planc.backends.torch.runtime.compress import CompressedLinear
from planc.backends.torch.runtime.layers import empty_weight
from planc.backends.torch.runtime.moe_io import (
    fused_expert_names,
    legacy_expert_names,
    per_expert_scheme,
    router_names,
)
from planc.layout.moe import expert_range, ffn_range

# A linear is a weight [out, in] (y = x @ w.T) or a module such as compress.CompressedLinear.
Linear = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ExpertWeights:
    """The experts one rank holds: global experts [first, first + len(gate)), each possibly only
    its ffn slice (gate/up [F/tp, H], down [H, F/tp]).

    Stacked (layout/moe.stacked_experts: plain weights), the weights are two tensors, gate_up
    [n, 2F/tp, H] (each expert's gate rows, then its up rows) and down_stack [n, H, F/tp], and
    gate / up / down hold views of them: the routed paths multiply the views, and a static
    decode step multiplies all n experts at once (moe_static). Otherwise both are None."""

    first: int
    gate: list[Linear] = field(default_factory=list)
    up: list[Linear] = field(default_factory=list)
    down: list[Linear] = field(default_factory=list)
    gate_up: torch.Tensor | None = None
    down_stack: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return len(self.gate)

    @classmethod
    def stacked(cls, first: int, gate_up: torch.Tensor, down: torch.Tensor) -> ExpertWeights:
        """The experts of two stacked tensors (see the class), the lists their views."""
        f = down.shape[2]
        return cls(first, [w[:f] for w in gate_up], [w[f:] for w in gate_up], list(down),
                   gate_up, down)


def stack_experts(experts: ExpertWeights, dtype: torch.dtype | None = None,
                  device: torch.device | None = None) -> ExpertWeights:
    """The same experts stacked (weights must be tensors), on `device` in `dtype` (default:
    the weights' own), each expert laid out as layers.laid_out lays out a weight there. Filled
    one expert at a time, so the device never holds a layer's experts twice (moe_block.make_mlp
    loads them so from the checkpoint's slices)."""
    gates, ups, downs = experts.gate, experts.up, experts.down
    if not all(isinstance(w, torch.Tensor) for ws in (gates, ups, downs) for w in ws):
        raise TypeError("stack_experts needs weight tensors, not modules")
    g0: torch.Tensor = gates[0]  # type: ignore[assignment]
    n, (f, h) = experts.count, g0.shape
    dtype, device = dtype or g0.dtype, device or g0.device
    gate_up = empty_weight((n, 2 * f, h), dtype, device)
    down = empty_weight((n, h, f), dtype, device)
    for i in range(n):
        gate_up[i, :f].copy_(gates[i])  # type: ignore[arg-type]
        gate_up[i, f:].copy_(ups[i])  # type: ignore[arg-type]
        down[i].copy_(downs[i])  # type: ignore[arg-type]
    return ExpertWeights.stacked(experts.first, gate_up, down)


def _apply(w: Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w) if isinstance(w, torch.Tensor) else w(x)


def route(
    x: torch.Tensor, router_weight: torch.Tensor, top_k: int, norm_topk: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights float32 [T, k], expert indices int64 [T, k]) exactly as MixtralTopKRouter, or
    Qwen3MoeTopKRouter with norm_topk_prob = norm_topk (False: the top-k softmax probabilities
    as they are, not renormalised to sum to 1)."""
    probs = torch.softmax(F.linear(x, router_weight).float(), dim=-1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    if not norm_topk:
        return weights, experts
    return weights / weights.sum(dim=-1, keepdim=True), experts


def expert_mlp(x: torch.Tensor, experts: ExpertWeights, i: int) -> torch.Tensor:
    """Local expert i (gated SiLU MLP) on rows x [n, H]: gate [n, F] (SiLU in place), up [n, F]
    multiplied into it and freed, then down [n, H]."""
    act = F.silu(_apply(experts.gate[i], x), inplace=True)
    act.mul_(_apply(experts.up[i], x))
    return _apply(experts.down[i], act)


def run_experts(
    x: torch.Tensor,
    counts: list[int],
    experts: ExpertWeights,
    dest: torch.Tensor | None = None,
) -> torch.Tensor:
    """x holds counts[i] consecutive rows for local expert i; returns their outputs, in x's row
    order, or with dest (int64 [rows]) the output of x's row r in row dest[r]."""
    out = torch.empty(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    start = 0
    for i, n in enumerate(counts):
        if n:  # an expert without tokens does no work (dropless, no padding)
            y = expert_mlp(x[start : start + n], experts, i)
            if dest is None:
                out[start : start + n] = y
            else:
                out.index_copy_(0, dest[start : start + n], y)
            del y
        start += n
    return out


def _held_contributions(
    x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, experts: ExpertWeights
) -> torch.Tensor:
    """sum over the chosen experts that this rank holds of weight * expert(x), float32 [T, H]."""
    k = idx.shape[1]
    flat = idx.reshape(-1) - experts.first
    held = (flat >= 0) & (flat < experts.count)
    order = torch.argsort(flat, stable=True)
    order = order[held[order]]  # (token, slot) positions sorted by local expert
    counts = torch.bincount(flat[held], minlength=experts.count).tolist()
    token = order // k
    y = run_experts(x[token], counts, experts).float()  # float32: the same tensor
    y.mul_(weights.reshape(-1)[order].unsqueeze(-1))
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    return out.index_add_(0, token, y)


def moe_local(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    experts: ExpertWeights,
    top_k: int,
    *,
    norm_topk: bool = True,
) -> torch.Tensor:
    """Single-rank block: `experts` must hold every expert, whole."""
    weights, idx = route(x, router_weight, top_k, norm_topk)
    return _held_contributions(x, weights, idx, experts).to(x.dtype)


def moe_replicated(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    experts: ExpertWeights,
    top_k: int,
    group: dist.ProcessGroup | None,
    *,
    norm_topk: bool = True,
) -> torch.Tensor:
    """Tokens identical on every rank of `group`; each (expert, ffn slice) held by exactly one
    rank of it. Each rank adds what it holds; an all_reduce of [T, H] sums the group."""
    weights, idx = route(x, router_weight, top_k, norm_topk)
    out = _held_contributions(x, weights, idx, experts).to(x.dtype)
    dist.all_reduce(out, group=group)
    return out


def moe_ep(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    experts: ExpertWeights,
    top_k: int,
    ep_group: dist.ProcessGroup | None,
    tp_group: dist.ProcessGroup | None = None,
    stats: dict[str, Any] | None = None,
    *,
    norm_topk: bool = True,
) -> torch.Tensor:
    """Expert-parallel block over `ep_group` (each rank its own tokens, E/ep experts).

    `stats`, if given, receives the bytes this call sent (counts, dispatch, combine, tp) so the
    compiler's formulas (moe_io.ep_traffic) can be checked against the real buffers.
    The split sizes are read on the host (.tolist()): one device sync per call, the price of
    dropless routing without a worst-case padded buffer. x is not needed after the dispatch
    rows are gathered from it: a caller that passes a temporary lets it be freed there.
    """
    ep = dist.get_world_size(ep_group)
    n_local = experts.count
    n_experts = ep * n_local
    if router_weight.shape[0] != n_experts:
        raise ValueError(f"router has {router_weight.shape[0]} experts, ep {ep} x {n_local} held")
    tokens, hidden = x.shape
    dtype, size = x.dtype, x.element_size()
    weights, idx = route(x, router_weight, top_k, norm_topk)

    # Sort the (token, slot) rows by global expert: rows for rank r are then contiguous.
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    send = x[order // top_k]
    del x
    counts = torch.bincount(flat, minlength=n_experts)  # int64 [E]
    del flat, idx
    recv_counts = torch.empty_like(counts)
    dist.all_to_all_single(recv_counts, counts, group=ep_group)  # [ep sources, n_local] flat
    send_splits = counts.view(ep, n_local).sum(1).tolist()
    recv_counts = recv_counts.view(ep, n_local)
    recv_splits = recv_counts.sum(1).tolist()

    recv = send.new_empty(sum(recv_splits), hidden)
    dist.all_to_all_single(recv, send, recv_splits, send_splits, group=ep_group)
    if stats is not None:
        stats["counts"] = counts.numel() * counts.element_size()
        stats["dispatch"] = send.numel() * size
    del send

    # Received rows are ordered by source rank, then local expert: run them grouped by local
    # expert and write each result back to its received row (the order combine sends back).
    local_id = torch.repeat_interleave(
        torch.arange(n_local, device=recv.device).repeat(ep), recv_counts.reshape(-1)
    )
    regroup = torch.argsort(local_id, stable=True)
    grouped = recv[regroup]
    del recv, local_id
    y = run_experts(grouped, recv_counts.sum(0).tolist(), experts, dest=regroup)
    del grouped, regroup

    back = y.new_empty(tokens * top_k, hidden)
    dist.all_to_all_single(back, y, send_splits, recv_splits, group=ep_group)
    if stats is not None:
        stats["combine"] = y.numel() * size
    del y
    # back[i] is the expert output for (token, slot) order[i]: weight it, add it to its token.
    contrib = back.float()  # float32: the same tensor, weighted in place
    del back
    contrib.mul_(weights.reshape(-1)[order].unsqueeze(-1))
    out32 = torch.zeros(tokens, hidden, dtype=torch.float32, device=contrib.device)
    out32.index_add_(0, order // top_k, contrib)
    del contrib
    out = out32.to(dtype)
    del out32
    if tp_group is not None:
        dist.all_reduce(out, group=tp_group)  # sum the row-parallel partials of down
    if stats is not None:
        stats["tp"] = out.numel() * size if tp_group is not None else 0
    return out


def moe_static(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    experts: ExpertWeights,
    top_k: int,
    mode: str,
    group: dist.ProcessGroup | None,
    tp_group: dist.ProcessGroup | None = None,
    stats: dict[str, Any] | None = None,
    *,
    norm_topk: bool = True,
) -> torch.Tensor:
    """The block at static shapes, for a decode step captured as a CUDA graph
    (runtime/decode_step.py): no row count depends on the routing, and nothing is read on the
    host. The top-k weights become a dense [T, E] float32 gate matrix, zero where a token did
    not choose the expert, and every local expert runs over every row, its output weighted by
    its column and added in float32. Stacked experts (ExpertWeights.stacked) run as two
    batched GEMMs over all n local experts (_batched_experts), others one expert at a time in
    expert order. A zero weight adds an exact zero, so each token's sum is the routed blocks'
    sum of its top_k contributions (to the rounding of a GEMM over more rows); what it costs is
    the local experts' GEMMs over all rows, which at a decode step's few rows read the same
    weights the routed block reads once its tokens touch every expert.

    mode (moe_block.MoeMLP): "all_to_all" gathers the ep group's rows and gate rows (all_gather
    over `group`, fixed sizes), sums the group's float32 partials with one all_reduce and keeps
    this rank's rows, then with `tp_group` completes the ffn slices' partials as moe_ep does;
    "replicated" all-reduces the cast output over `group` as moe_replicated does; "local" has
    no collective. `stats`, if given, receives the bytes each collective carried per rank
    (gather_rows, gather_gates, partials, tp), for checking the compiler's message sizes
    (cost/memory.MESSAGE_BYTES) against the real buffers.

    """
    tokens, hidden = x.shape
    weights, idx = route(x, router_weight, top_k, norm_topk)
    n_experts = router_weight.shape[0]
    gates = torch.zeros(tokens, n_experts, dtype=torch.float32, device=x.device)
    gates.scatter_(1, idx, weights)
    del weights, idx
    ep_group = group if mode == "all_to_all" else None  # gathered over it
    if ep_group is not None:
        ep = dist.get_world_size(ep_group)
        xs, gs = torch.empty(ep * tokens, hidden, dtype=x.dtype, device=x.device), \
            torch.empty(ep * tokens, n_experts, dtype=torch.float32, device=x.device)
        # into the flat buffers: a list of chunks would gather into a temporary and copy out
        dist.all_gather_into_tensor(xs, x, group=ep_group)
        dist.all_gather_into_tensor(gs, gates, group=ep_group)
        if stats is not None:
            stats["gather_rows"] = x.numel() * x.element_size()
            stats["gather_gates"] = gates.numel() * gates.element_size()
        del gates
    else:
        xs, gs = x, gates
    if experts.gate_up is not None:
        out32 = _batched_experts(xs, experts, gs)
    else:
        out32 = torch.zeros(xs.shape[0], hidden, dtype=torch.float32, device=x.device)
        for i in range(experts.count):
            e = experts.first + i
            y = expert_mlp(xs, experts, i).float()
            out32.add_(y.mul_(gs[:, e : e + 1]))
            del y
    del gs, xs
    if ep_group is not None:
        dist.all_reduce(out32, group=ep_group)  # every rank's experts' partials, float32
        if stats is not None:
            stats["partials"] = out32.numel() * out32.element_size()
        rank = dist.get_group_rank(ep_group, dist.get_rank())
        out32 = out32[rank * tokens : (rank + 1) * tokens]
    out = out32.to(x.dtype)
    del out32
    if mode == "replicated":
        dist.all_reduce(out, group=group)
    elif tp_group is not None:
        dist.all_reduce(out, group=tp_group)  # sum the row-parallel partials of down
    if stats is not None:
        stats["tp"] = out.numel() * out.element_size() if tp_group is not None else 0
    return out


def _batched_experts(xs: torch.Tensor, experts: ExpertWeights, gs: torch.Tensor) -> torch.Tensor:
    """sum over the local experts of gate column * expert(xs), float32 [G, H], with the n
    experts' stacked weights in two batched GEMMs: gate/up [n, G, 2F], SiLU x up, down
    [n, G, H]; then the weighting and the sum over experts in float32. A zero gate adds an
    exact zero, so with top-2 routing each row is the sum of its two weighted outputs whatever
    the order (cost/memory._batched_expert_terms counts these seven kernels)."""
    gate_up, down = experts.gate_up, experts.down_stack
    assert gate_up is not None and down is not None
    n, f = experts.count, down.shape[2]
    gu = torch.bmm(xs.expand(n, -1, -1), gate_up.transpose(1, 2))  # [n, G, 2F]
    act = F.silu(gu[..., :f])
    act.mul_(gu[..., f:])
    del gu
    y = torch.bmm(act, down.transpose(1, 2))  # [n, G, H]
    del act
    y32 = y.float()
    del y
    y32.mul_(gs[:, experts.first : experts.first + n].t().unsqueeze(-1))
    return y32.sum(0)


def compress_experts(
    experts: ExpertWeights, *, int8: bool = False, sparse_2_4: bool = False
) -> ExpertWeights:
    """The same experts with every linear a CompressedLinear (RunConfig.compress_int8 /
    compress_mlp_2_4: expert linears are MLP linears). Weights must be tensors."""

    def wrap(ws: list[Linear]) -> list[Linear]:
        if not all(isinstance(w, torch.Tensor) for w in ws):
            raise TypeError("compress_experts needs weight tensors, not modules")
        return [CompressedLinear(w, int8=int8, sparse_2_4=sparse_2_4) for w in ws]  # type: ignore[arg-type]

    return ExpertWeights(experts.first, wrap(experts.gate), wrap(experts.up), wrap(experts.down))


# --- loading ----------------------------------------------------------------------------------


def _find_naming(keys: list[str], layer: int) -> tuple[str, str]:
    """(prefix, "legacy" | "fused") of `layer`'s MoE tensors in a checkpoint."""
    for key in keys:
        for naming, name in zip(("legacy", "fused"), router_names(layer, prefix="")):
            if key.endswith(name) and (len(key) == len(name) or key[-len(name) - 1] == "."):
                return key[: len(key) - len(name)], naming
    raise KeyError(f"no Mixtral router weight for layer {layer} in the checkpoint")


def load_router(path: str, layer: int, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Router weight [E, H] of `layer` (replicated on every rank)."""
    with safe_open(path, framework="pt") as f:
        prefix, naming = _find_naming(list(f.keys()), layer)
        w = f.get_tensor(router_names(layer, prefix)[naming == "fused"])
    return w.to(dtype) if dtype is not None else w


def load_experts(
    path: str,
    layer: int,
    *,
    experts: int,
    ep: int = 1,
    ep_rank: int = 0,
    tp: int = 1,
    tp_rank: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> ExpertWeights:
    """This rank's experts of `layer` (and its ffn slice of each), read with get_slice so only
    those bytes leave the file. Accepts each family's per-expert names (what save_pretrained
    writes: Mixtral's w1/w3/w2, Qwen3-MoE's gate/up/down_proj) and the fused in-memory layout of
    transformers 5.x."""
    first, last = expert_range(experts, ep, ep_rank)
    out = ExpertWeights(first=first)

    def put(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
        for lst, w in ((out.gate, gate), (out.up, up), (out.down, down)):
            lst.append(w.to(device=device, dtype=dtype or w.dtype).contiguous())

    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
        prefix, _ = _find_naming(list(keys), layer)
        scheme = per_expert_scheme(layer, first, prefix, keys.__contains__)
        if scheme is not None:
            for e in range(first, last):
                names = legacy_expert_names(layer, e, prefix, scheme)
                gate, up, down = (f.get_slice(names[k]) for k in ("gate", "up", "down"))
                ffn = gate.get_shape()[0]
                lo, hi = ffn_range(ffn, tp, tp_rank)
                put(gate[lo:hi, :], up[lo:hi, :], down[:, lo:hi])
        else:
            names = fused_expert_names(layer, prefix)
            gate_up, down = f.get_slice(names["gate_up"]), f.get_slice(names["down"])
            ffn = down.get_shape()[2]
            lo, hi = ffn_range(ffn, tp, tp_rank)
            gates = gate_up[first:last, lo:hi, :]  # gate rows come first in gate_up_proj
            ups = gate_up[first:last, ffn + lo : ffn + hi, :]
            downs = down[first:last, :, lo:hi]
            for i in range(last - first):
                put(gates[i], ups[i], downs[i])
    return out
