"""Synthesis of plan holes (`?`): placeholder until the verifier-depth work lands."""

from __future__ import annotations

from planc.compiler.spec import PlanSpec
from planc.diagnostics import Diagnostics
from planc.verifier.report import PlanResult
from planc.verifier.solve import SolverConfig


def synthesize(plan: PlanSpec, diags: Diagnostics, solver: SolverConfig | None = None
               ) -> PlanResult | None:
    diags.error("E090", f"plan {plan.name!r} has holes (?), which this version cannot fill yet",
                plan.span, "write concrete values")
    return None
