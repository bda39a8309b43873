"""What a mixtral expert layer reads and sends, torch-free: checkpoint names, and the bytes each
rank sends per MoE call. Which experts and ffn rows a rank holds, and the routing mode, are
planc/layout/moe.py's.

Communication per call of `moe.moe_ep` on one rank holding `tokens` tokens (hidden H, top_k k,
E experts, element size b bytes, dropless, one row sent per (token, chosen expert) pair):
  counts   all_to_all_single of E int64 per-expert counts: 8*E bytes sent (and received);
  dispatch all_to_all_single of token rows: exactly tokens*k*H*b bytes sent, whatever the
           routing (the part addressed to the rank itself is a local copy: 1/ep of it when
           routing is uniform);
  combine  all_to_all_single sending back every row received in dispatch: routing dependent;
           tokens*k*H*b when every rank holds `tokens` tokens and routing is balanced, at most
           G*min(k, E/ep)*H*b when the ep group holds G tokens (all routed here);
  tp       with tp > 1, one all_reduce of the [tokens, H] output over the tp group: payload
           tokens*H*b (a ring all-reduce sends 2*(tp-1)/tp times the payload).
`moe.moe_replicated` (tokens identical on every rank of the group) sends no all-to-all at all,
only one all_reduce of payload tokens*H*b over the group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from planc.layout.moe import experts_per_rank

# --- checkpoint names -------------------------------------------------------------------------
# transformers 5.x holds experts fused in memory (gate_up_proj [E, 2F, H] with the gate rows
# first, down_proj [E, H, F], under mlp.experts for both families) but `save_pretrained` writes,
# and the published checkpoints hold, the per-expert names below (Mixtral's w1 = gate, w3 = up,
# w2 = down; Qwen3-MoE's gate/up/down_proj); its conversion_mapping.py merges them on load.
# Both layouts are read by moe.load_experts and moe_block.load_experts.


# Per-expert names save_pretrained writes for each MoE family: (block, gate, up, down).
PER_EXPERT_NAMES = {
    "mixtral": ("block_sparse_moe", "w1", "w3", "w2"),
    "qwen3_moe": ("mlp", "gate_proj", "up_proj", "down_proj"),
}


def legacy_expert_names(
    layer: int, expert: int, prefix: str = "model.", scheme: str = "mixtral"
) -> dict[str, str]:
    block, gate, up, down = PER_EXPERT_NAMES[scheme]
    base = f"{prefix}layers.{layer}.{block}.experts.{expert}"
    return {"gate": f"{base}.{gate}.weight", "up": f"{base}.{up}.weight",
            "down": f"{base}.{down}.weight"}


def per_expert_scheme(layer: int, expert: int, prefix: str, has: Callable[[str], bool]
                      ) -> str | None:
    """Which family's per-expert names the checkpoint holds (`has(name)`), or None (fused)."""
    return next(
        (k for k in PER_EXPERT_NAMES if has(legacy_expert_names(layer, expert, prefix, k)["gate"])),
        None,
    )


def fused_expert_names(layer: int, prefix: str = "model.") -> dict[str, str]:
    base = f"{prefix}layers.{layer}.mlp.experts"
    return {"gate_up": f"{base}.gate_up_proj", "down": f"{base}.down_proj"}


def router_names(layer: int, prefix: str = "model.") -> tuple[str, str]:
    """(legacy, fused) names of the router weight [E, H]."""
    return (
        f"{prefix}layers.{layer}.block_sparse_moe.gate.weight",
        f"{prefix}layers.{layer}.mlp.gate.weight",
    )


# --- communication ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MoeTraffic:
    """Bytes one rank sends in one MoE call (see the module docstring)."""

    counts: int  # all_to_all_single of per-expert counts
    dispatch: int  # exact
    combine_balanced: int  # combine when routing is balanced and every rank has `tokens`
    combine_max: int  # combine when every token of the ep group is routed to this rank
    tp_allreduce_payload: int  # all_reduce payload over the tp group, 0 without tp

    @property
    def total_balanced(self) -> int:
        return self.counts + self.dispatch + self.combine_balanced + self.tp_allreduce_payload


def ep_traffic(
    tokens: int,
    hidden: int,
    top_k: int,
    *,
    experts: int,
    ep: int,
    dtype_bytes: int,
    tp: int = 1,
    group_tokens: int | None = None,
) -> MoeTraffic:
    """Bytes sent by one rank of `moe.moe_ep` per call; `tokens` is this rank's token count,
    `group_tokens` the whole ep group's (default ep * tokens)."""
    row = hidden * dtype_bytes
    group = ep * tokens if group_tokens is None else group_tokens
    return MoeTraffic(
        counts=8 * experts,
        dispatch=tokens * top_k * row,
        combine_balanced=tokens * top_k * row,
        combine_max=ep_recv_rows_max(group, top_k, experts=experts, ep=ep) * row,
        tp_allreduce_payload=tokens * row if tp > 1 else 0,
    )


def ep_recv_rows_max(group_tokens: int, top_k: int, *, experts: int, ep: int) -> int:
    """Most token rows one rank can receive in dispatch (its worst-case receive buffer) when
    its ep group holds `group_tokens` tokens in all."""
    return group_tokens * min(top_k, experts_per_rank(experts, ep))


def replicated_allreduce_payload(tokens: int, hidden: int, dtype_bytes: int) -> int:
    """Payload of the one all_reduce of `moe.moe_replicated` (and of moe_ep's tp all_reduce)."""
    return tokens * hidden * dtype_bytes
