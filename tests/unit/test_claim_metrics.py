"""The seeds' numeric claims can be written and are checked: communication per transfer, ring
step, collective and step; one expert's weights; a layer's input for the whole batch; and
throughput against TPOT. Each expected value is redone here from the model's sizes."""

from __future__ import annotations

import pytest

from tests.helpers import MODEL, check_text, plan_text, verdict

# tests.helpers' model: hidden 4096, 32 heads, 8 kv heads, head_dim 128, ffn 16384, bf16;
# workload batch 128 x seq 2048
B, S, H, KV, HD, FFN, E = 128, 2048, 4096, 8, 128, 16384, 2
TP8 = "  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n"
PP2 = "  mesh pp=2, tp=8\n  shard layers over pp microbatches 8\n" \
      "  shard heads, kv_heads, ffn over tp\n"
RING = "  mesh sp=16\n  shard seq over sp attention ring\n"
MOE = MODEL.replace("  dtype", "  experts  16\n  top_k    2\n  dtype").replace("llama", "mixtral")
EP = "  mesh ep=16\n  shard experts, batch over ep\n"


def _claim(body: str, metric: str, value: int, model: str = MODEL):  # type: ignore[no-untyped-def]
    text = plan_text(body + f"  require {metric} == {value} B\n", model=model)
    return verdict(check_text(text)[0], "V600", metric)


@pytest.mark.parametrize("body,metric,expected,model", [
    (PP2, "transfer", (B // 8) * S * H * E, MODEL),  # one microbatch's activations
    (RING, "ring_step", 2 * B * (S // 16) * KV * HD * E, MODEL),  # K and V of one chunk
    (TP8, "collective", B * S * H * E, MODEL),  # the all-reduce of a block's output
    (TP8, "communication", 16 * 2 * B * S * H * E, MODEL),  # two all-reduces per layer
    (TP8, "layer_activations", B * S * H * E, MODEL),  # the whole batch's input to a layer
    (EP, "expert_weights", 3 * H * FFN * E, MOE),  # gate, up and down
    (EP, "expert_weights_per_device", 16 * 3 * H * FFN * E, MOE),  # 1 expert x 16 layers
    # a stage's receive posted ahead (or its send in flight): one microbatch's hidden states
    (PP2, "communication_buffers", (B // 8) * S * H * E, MODEL),
    # 8 layers per stage x 1/8 of q, k, v, o and the three MLP matrices
    (PP2, "tp_weights_per_device",
     8 * (2 * H * H + 2 * KV * HD * H + 3 * H * FFN) * E // 8, MODEL),
    (TP8, "token_size", H * E, MODEL),  # one token's hidden state
])
def test_a_seed_quantity_holds_at_its_value_and_is_refuted_off_it(body, metric, expected, model):
    assert _claim(body, metric, expected, model).status == "proved"
    off = _claim(body, metric, 2 * expected, model)
    assert off.status == "violated" and off.obligation.numbers["computed"] == expected


def test_a_claim_about_a_quantity_the_plan_does_not_have_is_violated():
    text = plan_text(TP8 + "  require transfer == 10.5 MB\n")
    v = verdict(check_text(text)[0], "V601")
    assert v.status == "violated" and "no pipeline stage" in v.obligation.bad


def _agreement(throughput: str, tpot: str, **kw: str):  # type: ignore[no-untyped-def]
    text = plan_text(TP8 + f"  require throughput >= {throughput} tokens/s\n"
                     f"  require tpot <= {tpot}\n", **kw)
    return verdict(check_text(text)[0], "V610")


def test_throughput_and_tpot_that_are_inverses_agree():
    assert _agreement("12800", "0.078 ms").status == "proved"  # 1 / 12,800 = 78.1 us


def test_throughput_and_tpot_a_unit_apart_name_the_unit_that_agrees():
    v = _agreement("120000", "8.3 ms")  # 1 / 120,000 = 8.33 us
    assert v.status == "violated"
    assert "`tpot <= 8.3 us` would agree" in v.obligation.hint
    assert v.obligation.numbers["ratio"] == pytest.approx(8.3e-3 * 120000)


def test_throughput_and_tpot_no_unit_reconciles_say_so():
    v = _agreement("1200000", "0.35 ms")  # 420 x the 0.83 us that 1.2M tokens/s implies
    assert v.status == "violated" and "no change of unit" in v.obligation.hint


DECODE = "workload w {\n  batch    8\n  phase    decode\n  context  512\n  generate 16\n}\n"


@pytest.mark.parametrize("throughput,tpot,status", [
    ("100", "50 ms", "proved"),  # 8 x 16 tokens over >= 15 TPOTs: at most 170 tokens/s
    ("1000", "50 ms", "violated"),
])
def test_decode_throughput_cannot_exceed_batch_tokens_per_tpot(throughput, tpot, status):
    model = MODEL.replace("  dtype", "  vocab    32000\n  dtype")
    assert _agreement(throughput, tpot, model=model, workload=DECODE).status == status


@pytest.mark.parametrize("body,metric,model", [
    (EP, "communication_buffers", MOE),  # all-to-all buffers are activations, counted there
    (EP, "tp_weights_per_device", MOE),  # nothing split within a layer
])
def test_a_plan_without_the_buffers_or_shards_has_zero_of_them(body, metric, model):
    v = _claim(body, metric, 10**9, model)
    assert v.status == "violated" and v.obligation.numbers["computed"] == 0


def _bandwidth(bandwidth: str, throughput: str | None = "450000"):  # type: ignore[no-untyped-def]
    thr = f"  require throughput >= {throughput} tokens/s\n" if throughput else ""
    text = plan_text(TP8 + thr + f"  require bandwidth == {bandwidth}\n")
    return check_text(text)[0]


def test_bandwidth_is_throughput_times_token_size():
    implied = 450000 * H * E  # 3.686 GB/s
    v = verdict(_bandwidth(f"{implied / 1e9:.3g} GB/s"), "V611")
    assert v.status == "proved"
    assert v.obligation.numbers["implied_bytes_per_s"] == implied


def test_bandwidth_a_unit_apart_names_the_unit_that_agrees():
    v = verdict(_bandwidth("3.69 MB/s"), "V611")
    assert v.status == "violated" and "`bandwidth == 3.69 GB/s` would agree" in v.obligation.hint
    v = verdict(_bandwidth("7 GB/s"), "V611")  # 1.9x: no unit reconciles it
    assert v.status == "violated" and "no change of unit" in v.obligation.hint


def test_bandwidth_without_a_throughput_claim_has_nothing_to_agree_with():
    v = verdict(_bandwidth("3.69 GB/s", throughput=None), "V601")
    assert v.status == "violated" and "claims no throughput" in v.obligation.bad


# a short sequence, so attention's FLOPs (4 x seq x hidden per token and layer, < 0.5% here)
# are negligible beside the linear layers' 2 FLOPs per parameter
SHORT = "workload w {\n  batch 128\n  seq   128\n}\n"
LINEAR = 16 * (2 * H * H + 2 * KV * HD * H + 3 * H * FFN)  # q, o, k, v and the MLP
PEAK = 8 * 989 * 10**12  # tp=8 H100s at the dense bf16 datasheet rate


def _utilization(percent: float, throughput: int | None = 200_000):  # type: ignore[no-untyped-def]
    thr = f"  require throughput >= {throughput} tokens/s\n" if throughput else ""
    text = plan_text(TP8 + thr + f"  require utilization == {percent:.4g}%\n", workload=SHORT)
    return check_text(text)[0]


def test_utilization_is_the_compute_the_throughput_claim_needs():
    expected = 100 * 2 * LINEAR * 200_000 / PEAK  # 19.7%
    v = verdict(_utilization(expected), "V612")
    assert v.status == "proved"
    assert v.obligation.numbers["achieved_percent"] == pytest.approx(expected, rel=0.01)


def test_utilization_the_throughput_does_not_need_is_violated_with_the_arithmetic():
    expected = 100 * 2 * LINEAR * 200_000 / PEAK
    v = verdict(_utilization(2 * expected), "V612")
    assert v.status == "violated" and "GFLOP per token" in v.obligation.bad
    assert f"utilization == {expected:.3g}%" in v.obligation.hint


def test_utilization_above_100_percent_is_violated_even_when_the_throughput_needs_it():
    needs = int(1.2 * PEAK / (2 * LINEAR))  # 120% of peak
    v = verdict(_utilization(120, throughput=needs), "V612")
    assert v.status == "violated" and "100%" in v.obligation.hint


def test_utilization_without_a_throughput_claim_has_nothing_to_agree_with():
    v = verdict(_utilization(50, throughput=None), "V601")
    assert v.status == "violated" and "claims no throughput" in v.obligation.bad
