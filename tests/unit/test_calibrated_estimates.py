"""A calibrated device (measured gemm, attention, hbm, allreduce, latency keys) changes the
estimates and nothing else: the sound bounds keep the datasheet peaks of its preset."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

from planc.compiler.lower import lower
from planc.cost.time import Efficiency, rates_of, step_estimate, step_lower_bound
from tests.helpers import plan_text, resolve_text

CALIBRATED = """
device H100_measured from H100 {
  gemm      494.5 TFLOPS
  attention 329.7 TFLOPS
  hbm       1.675 TB/s
  allreduce 225 GB/s
  latency   50 us
}
"""
BODY = ("  mesh pp=2, tp=8\n  shard layers over pp microbatches 4\n"
        "  shard heads, kv_heads, ffn over tp\n")


def plans():  # type: ignore[no-untyped-def]
    preset = resolve_text(plan_text(BODY))[0].plans[0]
    cluster = "cluster c {\n  device H100_measured x 16\n  node 8\n}\n"
    spec, diags = resolve_text(CALIBRATED + plan_text(BODY, cluster=cluster))
    assert not diags.has_errors, [d.message for d in diags]
    return preset, spec.plans[0]


def test_a_calibrated_device_keeps_its_presets_peaks_and_records_what_was_measured():
    preset, calibrated = plans()
    d, p = calibrated.cluster.device, preset.cluster.device
    assert (d.compute, d.bandwidth, d.cache) == (p.compute, p.bandwidth, p.cache)
    assert (d.gemm, d.hbm, d.latency) == (494_500_000_000_000, 1_675_000_000_000,
                                          Fraction(50, 10**6))
    assert p.gemm is None


def test_estimates_use_the_measured_rates_and_bounds_do_not():
    preset, calibrated = plans()
    g = lower(calibrated)
    assert lower(preset).classes == g.classes  # same placement: only the rates differ
    d = calibrated.cluster.device
    measured = replace(Efficiency(), gemm=d.gemm / d.compute, attention=d.attention / d.compute,
                       hbm=d.hbm / d.bandwidth, link=d.allreduce / calibrated.cluster.intra,
                       collective_latency_s=50e-6)
    plain = rates_of(preset)
    assert step_estimate(g, rates_of(calibrated)) == step_estimate(g, plain, measured)
    assert step_estimate(g, rates_of(calibrated)) > step_estimate(g, plain)  # slower measured
    assert step_lower_bound(g, rates_of(calibrated)) == step_lower_bound(g, plain)


def test_a_latency_needs_a_time_unit():
    _, diags = resolve_text("device d from H100 {\n  latency 50 GB\n}\n")
    assert [(x.code, x.span.line) for x in diags if x.severity == "error"] == [("E027", 2)]
