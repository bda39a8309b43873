"""Each obligation: a proved case and a violated case, with the numbers and the source line."""

from __future__ import annotations

import pytest

from planc.pipeline import check_paths
from planc.verifier.obligations import Obligation
from planc.verifier.solve import InternalError, SolverConfig, decide
from tests.helpers import CLUSTER, MODEL, WORKLOAD, check_text, line_of, plan_text, verdict

BIG = CLUSTER.replace("H100 x 16", "H100 x 64")


def test_device_count_proved_and_violated_with_numbers():
    ok, _ = check_text(plan_text("  mesh pp=2, tp=8\n  shard layers over pp\n  shard heads, ffn over tp\n"))
    assert verdict(ok, "V100").status == "proved"
    text = plan_text("  mesh pp=4, tp=8\n  shard layers over pp\n  shard heads, ffn over tp\n")
    bad, _ = check_text(text)
    v = verdict(bad, "V100")
    assert v.status == "violated"
    assert "needs 32 devices" in v.obligation.bad and "has 16" in v.obligation.bad
    assert v.obligation.span.line == line_of(text, "mesh pp=4")


def test_a_smaller_mesh_fits_with_a_warning_for_idle_devices():
    result, diags = check_text(plan_text("  mesh tp=8\n  shard heads, ffn over tp\n"))
    assert verdict(result, "V100").status == "proved"
    assert [d.code for d in diags.items if d.severity == "warning"] == ["W101"]


@pytest.mark.parametrize("mesh,shards,code,needle", [
    ("tp=3", "shard heads, kv_heads, ffn over tp", "V201", "heads (32) is not divisible by tp (3)"),
    ("tp=16", "shard heads, kv_heads, ffn over tp", "V202", "kv_heads (8) is not divisible by tp (16)"),
    ("pp=3", "shard layers over pp", "V208", "layers (16) is not divisible by pp (3)"),
    ("dp=3", "shard batch over dp", "V206", "batch (128) is not divisible by dp (3)"),
    ("sp=3", "shard seq over sp attention ring", "V207", "seq (2048) is not divisible"),
])
def test_divisibility_violations_name_the_numbers_and_line(mesh, shards, code, needle):
    text = plan_text(f"  mesh {mesh}\n  {shards}\n", cluster=BIG)
    result, _ = check_text(text)
    v = verdict(result, code)
    assert v.status == "violated" and needle in v.obligation.bad, v.obligation.bad
    assert v.obligation.span.line == line_of(text, "shard")
    assert "try" in v.obligation.hint


def test_kv_heads_follow_heads_when_not_listed():
    result, _ = check_text(plan_text("  mesh tp=16\n  shard heads, ffn over tp\n"))
    assert verdict(result, "V202").status == "violated"


def test_a_ring_sequence_of_one_chunk_per_rank_runs_contiguous_and_says_so():
    text = plan_text("  mesh sp=16\n  shard seq over sp attention ring\n").replace(
        "seq   2048", "seq   16400")  # 16400 = 16 x 1025: divisible by 16, not by 32
    for mode in ("ring", "gather"):  # gather lays chunks out like ring
        result = check_text(text.replace("attention ring", f"attention {mode}"))[0]
        v = verdict(result, "V207")
        assert v.status == "proved" and "no zig-zag" in v.obligation.ok, v.obligation.ok
        cover = verdict(result, "V300", "seq")
        assert cover.status == "proved" and "(contiguous)" in cover.obligation.ok
    zig = check_text(text.replace("seq   16400", "seq   16384"))[0]
    assert "(zig-zag: 2 chunks per rank)" in verdict(zig, "V207").obligation.ok
    assert "(zig-zag)" in verdict(zig, "V300", "seq").obligation.ok
    odd = verdict(check_text(text.replace("seq   16400", "seq   16401"))[0], "V207")
    assert odd.status == "violated"


def test_microbatches_must_divide_the_local_batch():
    text = plan_text("  mesh pp=2, dp=8\n  shard layers over pp microbatches 3\n  shard batch over dp\n")
    v = verdict(check_text(text)[0], "V209")
    assert v.status == "violated" and "local batch (16)" in v.obligation.bad
    ok = text.replace("microbatches 3", "microbatches 4")
    assert verdict(check_text(ok)[0], "V209").status == "proved"


def test_rope_pairing_of_a_head_dim_split():
    model = MODEL.replace("hidden   4096", "hidden   192").replace("head_dim 128", "head_dim 6")
    text = plan_text("  mesh n=8, m=2\n  shard heads, kv_heads over n\n  shard head_dim over m\n",
                     model=model)
    result, _ = check_text(text)
    assert verdict(result, "V203").status == "proved"  # 6 % 2 == 0 ...
    v = verdict(result, "V310")  # ... but pairs (i, i+3) cannot stay together in halves of 3
    assert v.status == "violated" and "i + 3" in v.obligation.bad
    ok = plan_text("  mesh n=8, m=2\n  shard heads, kv_heads over n\n  shard head_dim over m\n")
    assert verdict(check_text(ok)[0], "V310").status == "proved"


def test_coverage_is_proved_for_every_split_dimension():
    result, _ = check_text(plan_text("  mesh pp=2, tp=8\n  shard layers over pp\n"
                                     "  shard heads, kv_heads, ffn over tp\n"))
    names = {v.obligation.name: v.status for v in result.verdicts if v.obligation.kind == "coverage"}
    assert names == {f"{d} covered exactly once": "proved" for d in ("layers", "heads", "kv_heads", "ffn")}


@pytest.mark.parametrize("stages,status", [
    ("[0..7], [8..15]", "proved"),
    ("[0..7], [7..15]", "violated"),  # layer 7 twice
    ("[0..6], [8..15]", "violated"),  # layer 7 nowhere
    ("[8..15], [0..7]", "violated"),  # out of order
    ("[0..15]", "violated"),  # one stage for two pipeline ranks
])
def test_explicit_stages_must_cover_the_layers_once_in_order(stages, status):
    text = plan_text(f"  mesh pp=2, tp=8\n  shard layers over pp stages {stages}\n"
                     "  shard heads, ffn over tp\n")
    v = verdict(check_text(text)[0], "V301")
    assert v.status == status
    assert v.obligation.span.line == line_of(text, "stages")


def test_hbm_capacity_proved_and_violated_with_the_breakdown():
    fits, _ = check_text(plan_text("  mesh pp=2, tp=8\n  shard layers over pp microbatches 8\n"
                                   "  shard heads, kv_heads, ffn over tp\n"))
    v = verdict(fits, "V400")
    assert v.status == "proved"
    peak = fits.graph.classes[0].memory["peak"]
    assert peak == sum(fits.graph.classes[0].memory[k] for k in
                       ("weights", "activations", "kv_cache", "buffers", "reserve"))
    big = WORKLOAD.replace("seq   2048", "seq   65536")
    over, _ = check_text(plan_text("  mesh pp=2, tp=8\n  shard layers over pp\n"
                                   "  shard heads, kv_heads, ffn over tp\n", workload=big))
    v = verdict(over, "V400")
    assert v.status == "violated"
    assert "80 GB available" in v.obligation.bad and "activations" in v.obligation.bad
    assert v.obligation.numbers["peak"] > v.obligation.numbers["limit"] == 80 * 10**9
    assert "microbatches" in v.obligation.hint  # the smallest microbatch count that fits


def test_require_memory_percent_is_checked_per_device_class():
    text = plan_text("  mesh pp=2, tp=8\n  shard layers over pp microbatches 8\n"
                     "  shard heads, kv_heads, ffn over tp\n  require memory <= 1%\n")
    result, _ = check_text(text)
    v = verdict(result, "V401")
    assert v.status == "violated" and v.obligation.numbers["limit"] == 800 * 10**6
    assert v.obligation.span.line == line_of(text, "require memory")


def brute_force_params(layers, hidden, heads, kv_heads, head_dim, ffn):
    per_layer = (hidden * heads * head_dim  # q
                 + 2 * hidden * kv_heads * head_dim  # k, v
                 + heads * head_dim * hidden  # o
                 + 3 * hidden * ffn  # gate, up, down
                 + 2 * hidden)  # two RMSNorms
    return layers * per_layer + hidden  # final norm


def test_parameter_claims_are_checked_against_the_model():
    n = brute_force_params(16, 4096, 32, 8, 128, 16384)
    exact = plan_text(f"  mesh tp=16\n  shard heads, kv_heads, ffn over tp\n  require params == {n}\n")
    assert verdict(check_text(exact)[0], "V600").status == "proved"
    wrong = exact.replace(f"== {n}", "== 30e9")
    v = verdict(check_text(wrong)[0], "V600")
    assert v.status == "violated" and v.obligation.numbers["computed"] == n


def test_throughput_claims_above_the_physical_bound_are_refuted_and_never_proved():
    base = plan_text("  mesh tp=16\n  shard heads, kv_heads, ffn over tp\n  require throughput >= X tokens/s\n")
    low = verdict(check_text(base.replace("X", "1000"))[0], "V700")
    assert low.status == "not_refuted"  # never "proved": only a measurement could prove it
    bound = low.obligation.numbers["bound"]
    # independent sanity bound: 16 GPUs cannot beat their combined peak on the model's matmuls
    n = brute_force_params(16, 4096, 32, 8, 128, 16384)
    assert bound <= 16 * 989e12 / (2 * n)
    high = verdict(check_text(base.replace("X", str(int(bound * 1.01) + 1)))[0], "V700")
    assert high.status == "violated" and "impossible" in high.obligation.bad


def test_a_tiny_rlimit_gives_unknown_and_exit_3(tmp_path):
    f = tmp_path / "p.plan"
    f.write_text(plan_text("  mesh pp=2, tp=8\n  shard layers over pp\n  shard heads, ffn over tp\n"))
    results = [check_paths([f], solver=SolverConfig(timeout_ms=5000, rlimit=1)) for _ in range(2)]
    for r in results:
        assert r.exit_code == 3 and r.plans[0].status == "unknown"
    assert [v.status for v in results[0].plans[0].verdicts] == \
        [v.status for v in results[1].plans[0].verdicts]


def test_a_disagreement_between_z3_and_python_is_an_internal_error():
    lying = Obligation(kind="claim", code="X", name="lie", formula=lambda env, z: z.lift(True),
                       check=lambda v: False, ok="", bad="", span=None)
    with pytest.raises(InternalError):
        decide([lying], {})


@pytest.mark.parametrize("layout", ["overlap", "gap"])
def test_coverage_catches_a_broken_layout(monkeypatch, layout):
    """The coverage proof is not vacuous: a layout with an overlap or a gap is refuted."""
    from planc.verifier import encode

    def broken(dim, D, n, attention):  # type: ignore[no-untyped-def]
        c = D // n
        if layout == "overlap":  # shard r also owns the first index of shard r + 1
            return (lambda r, z: [(r * c, (r + 1) * c + 1, D)], lambda i, z: i / c, "broken")
        return (lambda r, z: [(r * c + 1, (r + 1) * c, D)], lambda i, z: i / c, "broken")

    monkeypatch.setattr(encode, "_layout", broken)
    result, _ = check_text(plan_text("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n"))
    assert {v.status for v in result.verdicts if v.obligation.code == "V300"} == {"violated"}


@pytest.mark.parametrize("mesh,shard", [
    ("sp=4", "shard seq over sp attention ring"),  # zig-zag
    ("n=2, m=4", "shard heads, kv_heads over n\n  shard head_dim over m"),  # RoPE-paired
    ("tp=3", "shard ffn over tp"),  # uneven contiguous chunks (ffn 16384 % 3 != 0)
])
def test_coverage_is_proved_for_each_runtime_layout(mesh, shard):
    result, _ = check_text(plan_text(f"  mesh {mesh}\n  {shard}\n"))
    covs = [v for v in result.verdicts if v.obligation.code == "V300"]
    assert covs and all(v.status == "proved" for v in covs)


def test_compressed_shards_count_values_scales_and_2_4_metadata():
    """The graph's compressed weights hold what CompressedLinear stores (tests/torch/
    test_compress.py checks planc/layout/compress.py against the real tensors): int8 values and
    one bf16 scale per row; for 2:4, half the values and 2 bits of metadata per kept value."""
    text = plan_text("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n"
                     "  compress weights int8\n  compress mlp sparse 2:4\n")
    result, _ = check_text(text)
    shards = {s.name.split(".")[-2]: s for s in result.graph.classes[0].shards}
    q_rows, f_rows, h = 32 * 128 // 8, 16384 // 8, 4096
    assert shards["q_proj"].format == "int8" and shards["q_proj"].bytes == q_rows * h + q_rows * 2
    up = f_rows * h // 2 + f_rows * h // 8 + f_rows * 2
    assert shards["up_proj"].format == "int8+2:4" and shards["up_proj"].bytes == up
    down = h * f_rows // 2 + h * f_rows // 8 + h * 2
    assert shards["down_proj"].bytes == down
