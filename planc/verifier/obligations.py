"""Obligations: the named facts a plan must satisfy, each tracked back to its source lines.

An obligation is built in plain Python from the spec and the placement graph: a z3 formula over
the plan's integer variables (mesh sizes, microbatches, batch, seq) that must hold, the same
predicate as a Python function (every verdict is re-checked with it), and the messages with every
number a user needs. `z3` is imported only inside the verifier package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from planc.diagnostics import Related, Span

# The documented `kind`s of the JSON report (docs/diagnostics.md lists codes per kind).
KINDS = ("device_count", "divisibility", "coverage", "hbm_capacity", "cache_capacity",
         "claim", "claim_consistency", "rope_pairing", "throughput_bound", "power_bound",
         "hit_rate", "structure")

# the kinds a report shows even when they hold: a claim's verdict is what its reader asked for
CLAIM_KINDS = ("claim", "claim_consistency", "throughput_bound", "power_bound", "hit_rate")

Env = dict[str, Any]  # variable name -> z3 Int (in solve) or int (in re-checks)


@dataclass(frozen=True)
class Obligation:
    kind: str
    code: str
    name: str  # short, stable: "heads % tp", "hbm stage0"
    formula: Callable[[Env, Any], Any]  # (vars, z3 module) -> BoolRef that must hold
    check: Callable[[dict[str, int]], bool]  # the same predicate in plain Python
    ok: str  # message when proved
    bad: str  # message when violated (all the numbers)
    span: Span | None
    hint: str | None = None
    related: tuple[Related, ...] = ()
    # "proof": an unsat negation proves it. "refute": only a violation is conclusive; when the
    # formula holds the claim is "not refuted" (e.g. a throughput claim under the bound).
    # "conditional": likewise only a violation is conclusive, and when the formula holds the
    # claim is true only under a condition planc states but does not model (an L2 hit rate:
    # how often the kernels re-request each byte).
    mode: str = "proof"
    numbers: dict[str, Any] = field(default_factory=dict)
    quantified: bool = False  # formula has its own quantifiers (coverage): no Python model check
