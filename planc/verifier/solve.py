"""Solving obligations with z3: a fresh context per run, a timeout, an rlimit and a fixed seed.

Each obligation is decided by asking z3 for a counterexample (the negation of the formula under
the plan's variable assignment): unsat -> PROVED; sat -> VIOLATED, with the model re-checked by
the obligation's plain-Python predicate (a disagreement is an internal error, exit 101);
unknown -> UNKNOWN with z3's reason. UNKNOWN is never a pass. An obligation that physics can
only refute is NOT_REFUTED when it holds (a claim within a bound), and one whose truth depends on
what planc does not model is CONDITIONAL (an L2 hit rate: on the kernels' access order).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Literal

import z3

from planc.verifier.obligations import Obligation

Status = Literal["proved", "violated", "unknown", "not_refuted", "conditional"]

DEFAULT_TIMEOUT_MS = 5_000
DEFAULT_RLIMIT = 50_000_000
SEED = 0
# An obligation's mode -> its status when the formula holds (obligations.Obligation.mode)
_HOLDS: dict[str, Status] = {"proof": "proved", "refute": "not_refuted",
                             "conditional": "conditional"}


class InternalError(Exception):
    """z3 and the Python re-check disagree: a bug in planc, never the user's fault."""


@dataclass(frozen=True)
class Verdict:
    obligation: Obligation
    status: Status
    reason: str = ""  # z3's reason for unknown


@dataclass
class SolverConfig:
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    rlimit: int = DEFAULT_RLIMIT


class Z:
    """z3 bound to one context: what an obligation's formula builds its terms with."""

    def __init__(self, ctx: z3.Context):
        self.ctx = ctx

    def int(self, n: int) -> z3.ArithRef:
        return z3.IntVal(n, self.ctx)

    def real(self, num: builtins.int, den: builtins.int = 1) -> z3.ArithRef:  # Z.int shadows int
        return z3.RealVal(f"{num}/{den}", self.ctx)

    def var(self, name: str) -> z3.ArithRef:
        return z3.Int(name, self.ctx)

    def lift(self, b: object) -> z3.BoolRef:
        return z3.BoolVal(b, self.ctx) if isinstance(b, bool) else b  # type: ignore[return-value]

    def __getattr__(self, name: str):  # And, Or, Not, If, Sum, ForAll, Implies ...
        return getattr(z3, name)


def decide(obligations: list[Obligation], values: dict[str, int],
           config: SolverConfig | None = None) -> list[Verdict]:
    """Decide every obligation for one concrete assignment of the plan's variables."""
    cfg = config or SolverConfig()
    ctx = z3.Context()
    env = {name: z3.Int(name, ctx) for name in sorted(values)}
    zctx = Z(ctx)
    verdicts = []
    ground = [(env[name], z3.IntVal(values[name], ctx)) for name in sorted(values)]
    for ob in obligations:
        formula = zctx.lift(ob.formula(env, zctx))
        # With every variable fixed, most formulas are ground arithmetic that simplify decides
        # exactly (no solver, no limits: a plan of 64 stages has 128 of them); a formula that
        # does not reduce to true or false (quantified ones) goes to the solver as before.
        folded = z3.simplify(z3.substitute(formula, *ground)) if ground else z3.simplify(formula)
        if z3.is_true(folded) or z3.is_false(folded):
            result = z3.unsat if z3.is_true(folded) else z3.sat
        else:
            s = z3.Solver(ctx=ctx)
            s.set("timeout", cfg.timeout_ms)
            s.set("rlimit", cfg.rlimit)
            s.set("random_seed", SEED)
            for name in sorted(values):
                s.add(env[name] == values[name])
            s.add(z3.Not(formula))
            result = s.check()
        if result == z3.unsat:
            if not ob.quantified and not ob.check(values):
                raise InternalError(f"z3 proved {ob.name!r} but the Python check says it fails")
            verdicts.append(Verdict(ob, _HOLDS[ob.mode]))
        elif result == z3.sat:
            if not ob.quantified and ob.check(values):
                raise InternalError(f"z3 found a violation of {ob.name!r} that the Python "
                                    "re-check does not confirm")
            verdicts.append(Verdict(ob, "violated"))
        else:
            verdicts.append(Verdict(ob, "unknown", s.reason_unknown()))
    return verdicts
