"""L2 hit rate claims (issue 14, seed 003's 23% and 98.5%): physics refutes only a rate above
100%, or 100% with compulsory misses; any other rate is "conditional" on the kernels requesting
each byte the step must read k = compulsory / ((1 - rate) x unique) times. Expected bytes are
redone here from the model's sizes and the H100's 50 MB of L2."""

from __future__ import annotations

import json

import pytest

from planc.diagnostics import render
from planc.verifier.report import CheckResult, to_json
from planc.verifier.text import to_text
from tests.helpers import check_text, line_of, plan_text, resolve_text, verdict

H, KV, HD, FFN, LAYERS, E = 4096, 8, 128, 16384, 16, 2
L2 = 50_000_000
TP8 = "  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n"
DP16 = "  mesh dp=16\n  shard batch over dp\n"
SHORT = "workload w {\n  batch 128\n  seq   128\n}\n"
# per device: 1/8 of each layer's matrices, its two norms whole, the final norm
WEIGHTS = (LAYERS * ((H * HD * (2 * 32 + 2 * KV) + 3 * H * FFN) // 8 + 2 * H) + H) * E
INPUTS = 128 * 128 * H * E  # the step's embeddings, every sequence (tp keeps them whole)
UNIQUE = WEIGHTS + INPUTS
COMPULSORY = UNIQUE - L2

TINY = """
model m {
  arch     llama
  layers   2
  hidden   256
  heads    4
  head_dim 64
  ffn      512
  dtype    bf16
}
"""


def _rate(claim: str, body: str = TP8, **kw: str):  # type: ignore[no-untyped-def]
    text = plan_text(body + f"  require cache_hit_rate {claim}\n", workload=SHORT, **kw)
    result, _ = check_text(text)
    return verdict(result, "V720"), result, text


def test_the_bytes_a_step_must_read_are_the_weights_and_the_inputs():
    v, _, _ = _rate("== 50%")
    n = v.obligation.numbers
    assert (n["unique_bytes"], n["compulsory_bytes"], n["cache_bytes"]) == (UNIQUE, COMPULSORY,
                                                                            L2)


def test_a_rate_that_needs_k_rerequests_per_byte_is_conditional_with_the_arithmetic():
    v, result, _ = _rate("== 98.5%")
    k = COMPULSORY / (0.015 * UNIQUE)
    assert v.status == "conditional" and k > 1
    assert v.obligation.numbers["rerequests_k"] == pytest.approx(k)
    assert v.obligation.numbers["requests_at_least_bytes"] == pytest.approx(COMPULSORY / 0.015)
    assert f"at least {k:.3g} times on average" in v.obligation.ok
    assert "neither confirm nor refute" in v.obligation.ok
    assert result.status == "proved"  # conditional is not a failure ...
    out = to_text(CheckResult(plans=[result]))
    assert "  if V720 hit_rate: cache_hit_rate == 98.5 % is conditional" in out  # ... nor a proof


def test_a_rate_the_resident_share_covers_needs_no_rerequest():
    # L2 / unique bytes could hit even if each byte were requested once: half of that, k < 1
    share = L2 / UNIQUE
    v, _, _ = _rate(f">= {100 * share / 2:.3g}%")
    assert v.status == "conditional" and v.obligation.numbers["rerequests_k"] < 1
    assert v.obligation.numbers["streaming_hit_rate_at_most"] == pytest.approx(100 * share)
    assert "requesting each byte once suffices" in v.obligation.ok


def test_a_step_that_fits_the_l2_has_no_compulsory_miss():
    v, _, _ = _rate("== 99%", body=DP16, model=TINY)
    assert v.status == "conditional"
    assert v.obligation.numbers["compulsory_bytes"] == 0
    assert v.obligation.numbers["rerequests_k"] == 0
    assert "no miss is compulsory" in v.obligation.ok
    full, _, _ = _rate(">= 100%", body=DP16, model=TINY)  # possible: everything resident
    assert full.status == "conditional" and "resident" in full.obligation.ok


@pytest.mark.parametrize("claim", ["== 100%", ">= 100%"])
def test_a_perfect_rate_with_compulsory_misses_is_refuted(claim):
    v, _, _ = _rate(claim)
    assert v.status == "violated"
    assert "impossible" in v.obligation.bad and "miss" in v.obligation.bad


@pytest.mark.parametrize("claim", ["== 123%", "<= 150%", "> 100%"])
def test_a_rate_above_100_percent_is_refuted_with_a_located_caret(claim):
    v, result, text = _rate(claim)
    assert v.status == "violated" and "no hit rate exceeds 100%" in v.obligation.bad
    assert result.status == "violated"
    line = line_of(text, "cache_hit_rate")
    out = to_text(CheckResult(plans=[result], sources={"t.plan": text}))
    assert f"error[V720]: cache_hit_rate {claim.split()[0]}" in out
    assert f"--> t.plan:{line}:3" in out
    assert "^^^^" in out.split(f"--> t.plan:{line}:3", 1)[1]


def test_an_upper_limit_on_the_rate_is_never_refuted():
    v, _, _ = _rate("<= 23%")
    assert v.status == "conditional" and "every request may miss" in v.obligation.ok


def test_the_json_report_says_conditional_and_the_numbers():
    _, result, _ = _rate("== 23%")
    doc = json.loads(to_json(CheckResult(plans=[result])))
    ob = next(o for o in doc["plans"][0]["obligations"] if o["code"] == "V720")
    assert ob["status"] == "conditional" and ob["kind"] == "hit_rate"
    assert ob["numbers"]["rerequests_k"] == pytest.approx(COMPULSORY / (0.77 * UNIQUE))


@pytest.mark.parametrize("value,code", [("0.985", "E041"), ("98.5 MB", "E041"),
                                        ("98.5 pct", "E027"), ("0%", "E023")])
def test_a_rate_that_is_not_a_positive_percentage_is_a_located_error(value, code):
    line = f"  require cache_hit_rate == {value}\n"
    text = plan_text(TP8 + line)
    _, diags = resolve_text(text)
    errors = [d for d in diags if d.severity == "error"]
    assert [d.code for d in errors] == [code]
    assert errors[0].span.line == line_of(text, line.strip())
    shown = render(errors[0], {"t.plan": text})
    assert f"--> t.plan:{errors[0].span.line}:{errors[0].span.column}" in shown and "^" in shown
