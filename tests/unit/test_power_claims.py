"""Power and energy claims (issue 14 item 3): bounds from the datasheet TDP and peak compute
that can refute a claim, never confirm one. Expected values are redone from the model's sizes
and the H100's datasheet figures (700 W, 989 TFLOP/s dense bf16)."""

from __future__ import annotations

import pytest

from tests.helpers import check_text, line_of, plan_text, resolve_text, verdict

H, KV, HD, FFN = 4096, 8, 128, 16384
TP8 = "  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n"
# a short sequence: attention's FLOPs are < 0.5% beside the linear layers' 2 per parameter
SHORT = "workload w {\n  batch 128\n  seq   128\n}\n"
LINEAR = 16 * (2 * H * H + 2 * KV * HD * H + 3 * H * FFN)
JOULES = 2 * LINEAR * 700 / 989e12  # per token, the compute alone at peak FLOP/s per watt


def _power(claim: str, cluster_device: str = "",  # type: ignore[no-untyped-def]
           device: str = "H100"):
    cluster = f"{cluster_device}\ncluster c {{\n  device {device} x 16\n  node 8\n}}\n"
    text = plan_text(TP8 + f"  require {claim}\n", cluster=cluster, workload=SHORT)
    return verdict(check_text(text)[0], "V710")


@pytest.mark.parametrize("claim,status", [
    ("power == 5.6 kW", "not_refuted"),  # 8 devices x 700 W: at the bound
    ("power == 6 kW", "violated"),  # more than 8 x 700 W
    ("power >= 5.7 kW", "violated"),
    ("power <= 1 kW", "not_refuted"),  # a ceiling: only a measurement can refute it
])
def test_power_beyond_devices_times_tdp_is_impossible(claim, status):
    v = _power(claim)
    assert v.status == status and v.obligation.numbers["bound"] == 8 * 700
    if status == "violated":
        assert "impossible" in v.obligation.bad and "700 W TDP" in v.obligation.bad


def test_a_declared_power_replaces_the_presets_tdp():
    v = _power("power == 3 kW", "device capped from H100 {\n  power 350 W\n}", "capped")
    assert v.status == "violated" and v.obligation.numbers["bound"] == 8 * 350


def test_a_device_without_power_cannot_have_a_power_claim():
    dev = ("device bare {\n  memory 80 GB\n  cache 50 MB\n  compute 989 TFLOPS\n"
           "  bandwidth 3.35 TB/s\n}")
    cluster = f"{dev}\ncluster c {{\n  device bare x 16\n  node 8\n}}\n"
    text = plan_text(TP8 + "  require power <= 5 kW\n", cluster=cluster, workload=SHORT)
    v = verdict(check_text(text)[0], "V601")
    assert v.status == "violated" and "`power`" in v.obligation.bad


@pytest.mark.parametrize("claim,status", [
    (f"energy_per_token <= {JOULES * 1000 / 2:.4g} mJ", "violated"),  # half the compute's need
    (f"energy_per_token == {JOULES * 1000 * 2:.4g} mJ", "not_refuted"),
    ("energy_per_token >= 1 mJ", "not_refuted"),  # a floor: nothing to refute
    (f"tokens_per_joule >= {2 / JOULES:.4g} tokens/J", "violated"),
    (f"tokens_per_joule == {0.5 / JOULES:.4g} tokens/J", "not_refuted"),
])
def test_energy_below_what_the_compute_needs_at_tdp_efficiency_is_impossible(claim, status):
    v = _power(claim)
    assert v.status == status
    expected = JOULES if claim.startswith("energy") else 1 / JOULES
    assert v.obligation.numbers["bound"] == pytest.approx(expected, rel=0.01)
    assert "a bound, not an estimate" in (v.obligation.bad if status == "violated"
                                         else v.obligation.ok)


@pytest.mark.parametrize("line", ["  require power <= 5 GB\n",
                                  "  require tokens_per_joule >= 3\n"])
def test_a_power_claim_in_the_wrong_unit_is_a_located_error(line):
    text = plan_text(TP8 + line)
    _, diags = resolve_text(text)
    errors = [d for d in diags if d.severity == "error"]
    assert [d.code for d in errors] == ["E041"]
    assert errors[0].span.line == line_of(text, line.strip())


def _efficiency(claim: str):  # type: ignore[no-untyped-def]
    text = plan_text(TP8 + "  require throughput >= 10000 tokens/s\n  require power == 5 kW\n"
                     f"  require {claim}\n", workload=SHORT)
    return verdict(check_text(text)[0], "V613")


@pytest.mark.parametrize("claim,status", [
    ("tokens_per_joule == 2 tokens/J", "proved"),  # 10,000 tokens/s / 5,000 W
    ("tokens_per_joule == 3 tokens/J", "violated"),
    ("energy_per_token == 500 mJ", "proved"),  # 5,000 W / 10,000 tokens/s
    ("energy_per_token == 50 mJ", "violated"),
])
def test_energy_claims_agree_with_the_throughput_and_power_claims(claim, status):
    v = _efficiency(claim)
    assert v.status == status
    assert v.obligation.numbers["implied"] == pytest.approx(2 if "tokens_per" in claim else 0.5)
