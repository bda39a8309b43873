"""Hints for infeasible or misdivided plans: they never crash, do not depend on machine load,
and never propose a value another obligation refutes."""

from __future__ import annotations

import re
import time

from planc.pipeline import check_paths
from tests.helpers import WORKLOAD, check_text, plan_text


def _check(tmp_path, text: str):  # type: ignore[no-untyped-def]
    f = tmp_path / "h.plan"
    f.write_text(text)
    return check_paths([f])


def test_an_infeasible_plan_with_open_microbatches_and_a_fixed_batch_gets_e093(tmp_path):
    """Was exit 101: the batch probe multiplied by the microbatch hole (None)."""
    text = plan_text("  mesh pp=?, tp=2\n  shard layers over pp microbatches ?\n"
                     "  shard heads, kv_heads, ffn over tp\n  require memory <= 1%\n")
    result = _check(tmp_path, text)
    [d] = [d for d in result.diagnostics if d.code == "E093"]
    assert d.span.line == text.splitlines().index("plan p {") + 1
    assert result.exit_code == 1


def test_the_e093_hint_is_the_same_on_a_machine_too_slow_for_any_wall_clock_budget(
        tmp_path, monkeypatch):
    big = WORKLOAD.replace("seq   2048", "seq   262144")
    text = plan_text("  mesh sp=?\n  shard seq over sp attention ring\n", workload=big)
    [idle] = [d.hint for d in _check(tmp_path, text).diagnostics if d.code == "E093"]
    clock = iter(range(0, 10**9, 10))  # every reading of the clock is 10 s after the last
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    [loaded] = [d.hint for d in _check(tmp_path, text).diagnostics if d.code == "E093"]
    assert loaded == idle and "needs at least" in idle and "largest batch that fits" in idle


def test_every_head_dim_split_the_v203_hint_proposes_passes_v310():
    body = "  mesh n=4, m=3\n  shard heads, kv_heads over n\n  shard head_dim over m\n"
    cluster = "cluster c {\n  device H100 x 12\n  node 4\n}\n"
    result, _ = check_text(plan_text(body, cluster=cluster))
    [v] = [v for v in result.verdicts if v.obligation.code == "V203"]
    proposed = [int(x) for x in re.search(r"\{([\d, ]+)\}", v.obligation.hint).group(1)
                .split(",")]
    assert proposed
    for m in proposed:
        again, _ = check_text(plan_text(body.replace("m=3", f"m={m}"),
                                         cluster=cluster.replace("x 12", f"x {4 * m}")))
        bad = [x.obligation.code for x in again.verdicts
               if x.obligation.code in ("V203", "V310") and x.status != "proved"]
        assert not bad, (m, bad)


def test_claims_that_contradict_each_other_do_not_make_every_hole_value_infeasible(tmp_path):
    text = plan_text("  mesh tp=?\n  shard heads, kv_heads, ffn over tp\n"
                     "  require throughput >= 120000 tokens/s\n  require tpot <= 8.3 ms\n")
    result = _check(tmp_path, text)
    assert not [d for d in result.diagnostics if d.code == "E093"]
    [p] = result.plans
    assert [v.status for v in p.verdicts if v.obligation.code == "V610"] == ["violated"]
