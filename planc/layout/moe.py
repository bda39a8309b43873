"""The MoE routing mode, and which experts and ffn rows a rank holds.

Mode (one name each, used by the compiler, the cost model and the runtime):
- "local": neither experts nor ffn split: every rank runs every expert whole;
- "all_to_all": experts split over axes along which tokens are split (batch or seq: attention
  is data parallel there); tokens travel to their experts' ranks and back by all-to-all, and
  ffn axes, if any, are the tensor-parallel group inside each expert;
- "replicated": experts and/or ffn split over axes where tokens are the same on every rank (the
  tensor-parallel axis of the heads): each rank runs its experts' share of every token and the
  outputs are all-reduced.
Placement: expert part r of ep holds the contiguous experts [r*E/ep, (r+1)*E/ep); ffn part t of
tp holds rows [t*F/tp, (t+1)*F/tp) of gate and up and the same columns of down.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from planc.layout.slices import even

MoeMode = Literal["local", "all_to_all", "replicated"]


def moe_mode(experts: Collection[str], ffn: Collection[str], tokens: Collection[str]) -> MoeMode:
    """The mode of a MoE layer whose experts, ffn and tokens (batch + seq) are split over these
    mesh axes. Experts over some token axes but not all are refused (E054 in check_structure)."""
    ex, tok = set(experts), set(tokens)
    if not ex and not ffn:
        return "local"
    if ex and ex <= tok:
        return "all_to_all"
    if ex & tok:
        raise ValueError(
            f"experts split over {sorted(ex)}: either all of them carry different tokens "
            f"(batch/seq over {sorted(tok)}) or none do"
        )
    return "replicated"


def experts_per_rank(experts: int, ep: int) -> int:
    if ep <= 0 or experts % ep:
        raise ValueError(f"experts ({experts}) is not divisible by ep ({ep})")
    return experts // ep


def expert_range(experts: int, ep: int, ep_rank: int) -> tuple[int, int]:
    """[first, last) global expert indices held by expert part `ep_rank`."""
    n = experts_per_rank(experts, ep)
    if not 0 <= ep_rank < ep:
        raise ValueError(f"ep_rank {ep_rank} outside [0, {ep})")
    return ep_rank * n, (ep_rank + 1) * n


def expert_owner(expert: int, experts: int, ep: int) -> int:
    return expert // experts_per_rank(experts, ep)


def ffn_range(ffn: int, tp: int, tp_rank: int) -> tuple[int, int]:
    """[first, last) rows of gate/up (columns of down) held by ffn part `tp_rank`."""
    if tp <= 0 or ffn % tp:
        raise ValueError(f"ffn ({ffn}) is not divisible by tp ({tp})")
    r = even(ffn, tp, tp_rank)
    return r.start, r.stop


def stacked_experts(int8: bool, mlp_2_4: bool) -> bool:
    """Whether a rank keeps its experts' weights stacked, one gate/up tensor [n, 2F, H] and one
    down tensor [n, H, F] (runtime/moe.ExpertWeights.gate_up / down_stack), so that a static
    decode step runs its n local experts as two batched GEMMs instead of n x 3 GEMMs and
    n x 5 elementwise kernels (runtime/moe.moe_static). Plain weights only: a compressed
    linear (int8, 2:4) is a module of its own per expert, and those run expert by expert."""
    return not (int8 or mlp_2_4)
