"""The strategy registry: one record per parallel strategy.

A record says which model dimensions the strategy splits, the role its mesh axes play, which
other roles may share an axis with it, what it communicates, which memory terms it changes and
which runtime core runs it. check_structure (axis roles and sharing, hence lower's axis roles),
verifier/encode.py (the divisibility obligations), render/tables.py (show's strategy names) and
the runtime (backends/torch/runtime/cores.py) read these records; docs/architecture.md says
how to add one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    name: str
    role: str  # the role of a mesh axis that carries it (Axis.role in the placement graph)
    dims: tuple[str, ...]  # model dimensions it splits
    divides: tuple[tuple[str, str], ...]  # (dim, obligation code): dim divisible by its split
    shares_axis_with: tuple[str, ...]  # other roles that may ride on the same axis
    collectives: tuple[str, ...]  # what it sends, per layer and microbatch (lower.py counts them)
    memory: tuple[str, ...]  # what it shrinks or adds in the memory model (planc/cost)
    core: str  # its runtime core (backends/torch/runtime/cores.py); "" when it needs none


STRATEGIES: tuple[Strategy, ...] = (
    # vocab: the embedding and lm_head rows, padded when the vocabulary does not divide (no
    # divisibility obligation; compiler/vocab.py)
    Strategy("tensor", "tp", ("heads", "kv_heads", "ffn", "vocab"),
             (("heads", "V201"), ("kv_heads", "V202"), ("ffn", "V204")), ("hd", "ep"),
             ("all_reduce after o_proj", "all_reduce after down_proj"),
             ("q/k/v/o and MLP weights / tp", "attention activations / tp"), "heads"),
    Strategy("head_dim", "hd", ("head_dim",), (("head_dim", "V203"),), ("tp",),
             ("all_reduce of partial scores over head_dim", "all_reduce after o_proj"),
             ("q/k/v/o weights / hd", "float32 scores"), "head_dim"),
    Strategy("pipeline", "pp", ("layers",), (("layers", "V208"),), (),
             ("send_recv of activations between stages",),
             ("layers / pp", "send and receive buffers"), ""),
    Strategy("sequence", "sp", ("seq",), (("seq", "V207"),), (),
             ("ring_pass of K/V (ring)", "all_gather of K/V (gather)"),
             ("activations / sp", "K/V blocks in flight"), "ring"),  # or "gather": the plan says
    Strategy("expert", "ep", ("experts",), (("experts", "V205"),), ("dp", "tp"),
             ("all_to_all dispatch and combine", "all_reduce (replicated tokens)"),
             ("experts / ep", "routed rows"), "moe"),
    Strategy("data", "dp", ("batch",), (("batch", "V206"),), ("ep",), (), ("batch / dp",), ""),
)
ROLE_OF_DIM: dict[str, str] = {d: s.role for s in STRATEGIES for d in s.dims}
# Every divisibility obligation, in code order (the order reports list them).
DIVISIBILITY: tuple[tuple[str, str], ...] = tuple(
    sorted(((code, dim) for s in STRATEGIES for dim, code in s.divides)))


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
