"""solve.decide folds ground obligations (every variable fixed) with z3.simplify and sends the
rest (quantified formulas) to the solver: both paths give the same verdicts."""

from __future__ import annotations

import pytest

from planc.verifier.obligations import Obligation
from planc.verifier.solve import decide


def _ob(formula, check, quantified=False, mode="proof"):  # type: ignore[no-untyped-def]
    return Obligation(kind="claim", code="V600", name="t", formula=formula, check=check,
                      ok="", bad="", span=None, quantified=quantified, mode=mode)


@pytest.mark.parametrize("tp,status", [(4, "proved"), (3, "violated")])
def test_a_ground_formula_is_decided_by_folding(tp, status):
    ob = _ob(lambda env, z: env["heads"] % env["tp"] == 0, lambda v: v["heads"] % v["tp"] == 0)
    assert decide([ob], {"heads": 32, "tp": tp})[0].status == status


@pytest.mark.parametrize("bound,status", [(10, "proved"), (5, "violated")])
def test_a_quantified_formula_still_goes_to_the_solver(bound, status):
    # for every k in [0, tp): k < bound; simplify leaves the ForAll, the solver decides it
    def formula(env, z):  # type: ignore[no-untyped-def]
        k = z.var("k")
        return z.ForAll([k], z.Implies(z.And(k >= 0, k < env["tp"]), k < bound))
    ob = _ob(formula, lambda v: True, quantified=True)
    assert decide([ob], {"tp": 8})[0].status == status


def test_a_refute_mode_formula_that_folds_true_is_not_refuted():
    ob = _ob(lambda env, z: z.lift(True), lambda v: True, mode="refute")
    assert decide([ob], {})[0].status == "not_refuted"
