"""Greedy decode with a KV cache: every specs/local/decode_*.plan, emitted and run under torchrun
(gloo, CPU), generates exactly the tokens of Hugging Face `generate` (greedy, use_cache=True) on
the same checkpoint and prompts; the flash-decoding merge, the cache slots of a sequence-sharded
cache and the MLPerf metric formulas against plain arithmetic.

Rank 0 gathers every sequence's generated tokens and compares them with transformers'
LlamaForCausalLM / MixtralForCausalLM `generate` in float32; the run reports matches_reference.
One torchrun per plan (warm-up 0, one timed run), so the file stays within a few minutes on two
shared cores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from planc.backends.torch.metrics import decode_times, output_tokens_per_s, tpot_s
from planc.backends.torch.runtime.config import ModelDims, RunConfig
from planc.backends.torch.runtime.decode_attention import lse_merge
from planc.backends.torch.runtime.layout import seq_positions
from planc.layout.schedule import cache_capacity, step_slots
from planc.models.features import ModelFeatures

SPECS = Path(__file__).resolve().parents[2] / "specs" / "local"
DECODE_PLANS = [
    "decode_tp2",
    "decode_pp2",
    "decode_tp2_pp2",
    "decode_headdim_2x2",
    "decode_ring4",
    "decode_ep4",
    "decode_layerwise4",
    "decode_dp2_tp2",
]
# Whole heads per rank: the decode steps run at static addresses (runtime/decode_step.py;
# eagerly on the CPU, one CUDA graph per microbatch and exchange on a GPU), pipeline stages and
# MoE blocks (moe.moe_static) included.
STATIC_STEP = {"decode_tp2", "decode_dp2_tp2", "decode_pp2", "decode_tp2_pp2", "decode_layerwise4",
               "decode_ep4"}
METRIC_KEYS = {"ttft_ms", "tpot_ms", "output_tokens_per_s", "generated", "matches_reference"}


def compiled(name: str) -> tuple[Any, RunConfig]:
    """(placement graph, RunConfig with one timed run) of specs/local/<name>.plan."""
    from planc.backends.torch.runconfig import to_run_config
    from planc.compiler.lower import lower
    from planc.diagnostics import Diagnostics
    from planc.pipeline import load

    diags = Diagnostics()
    spec, _ = load(str(SPECS / f"{name}.plan"), diags)
    assert spec is not None and len(spec.plans) == 1, diags
    plan = spec.plans[0]
    graph = lower(plan)
    return graph, to_run_config(plan, graph, warmup=0, repeats=1)


def assert_decode_metrics(m: dict[str, Any], cfg: RunConfig) -> None:
    assert METRIC_KEYS <= m.keys(), sorted(m)
    assert m["matches_reference"] is True, (m["generated"], m.get("reference_generated"))
    assert len(m["generated"]) == cfg.batch
    assert all(len(row) == cfg.generate for row in m["generated"])
    assert all(0 <= t < (cfg.model.vocab or 0) for row in m["generated"] for t in row)
    assert 0 < m["ttft_ms"] <= m["latency_ms"]
    expect_tpot = (m["latency_ms"] - m["ttft_ms"]) / (cfg.generate - 1)
    assert m["tpot_ms"] == pytest.approx(expect_tpot)
    assert m["output_tokens_per_s"] == pytest.approx(cfg.batch * cfg.generate / m["time_s"])
    assert m["world_size"] == cfg.world_size and len(m["ranks"]) == cfg.world_size


# --- every decode plan, end to end --------------------------------------------------------------


def test_planc_check_proves_every_decode_plan():
    from planc.pipeline import check_paths

    result = check_paths([str(SPECS / f"{n}.plan") for n in DECODE_PLANS])
    assert not result.diagnostics
    assert sorted(p.status for p in result.plans) == ["proved"] * len(DECODE_PLANS)


@pytest.mark.distributed
@pytest.mark.parametrize("name", DECODE_PLANS)
def test_decode_plan_generates_the_tokens_of_hf_generate(name: str, run_plan):
    from planc.compiler.ir import ranks_of

    graph, cfg = compiled(name)
    assert cfg.phase == "decode" and cfg.seq == cfg.context
    m = run_plan(cfg, name, timeout_s=240)
    assert_decode_metrics(m, cfg)
    if name in STATIC_STEP:
        assert m["decode_step"] == "eager (static step)", m["decode_step"]
        assert m["decode_attention"] == "grouped_bmm"
    else:
        assert m["decode_step"].startswith("eager rounds ("), m["decode_step"]
    # Each rank's preallocated cache and its weights (the lm_head on the last stage) are the
    # compiler's kv_cache and weights rows for its device class.
    for cls in graph.classes:
        for r in ranks_of(graph.mesh, cls):
            assert m["ranks"][r]["kv_cache_bytes"] == cls.memory["kv_cache"], (name, r)
            assert m["ranks"][r]["weight_bytes"] == cls.memory["weights"], (name, r)


@pytest.mark.distributed
def test_gather_over_sp2_x_pipeline_2_contiguous_chunks_generates_hf_tokens(run_plan):
    """A sequence-sharded cache on a two-stage pipeline: gather prefill over contiguous chunks
    (the prompt's last position on sequence rank 1, which broadcasts the first tokens), the
    last stage's tokens sent to their first-stage peers, 2 microbatches, GQA, and an odd
    number of generated tokens spread round-robin."""
    model = ModelDims(arch="llama", layers=2, hidden=64, heads=8, kv_heads=2, head_dim=8,
                      ffn=128, vocab=96)  # fmt: skip
    cfg = RunConfig(model=model, mesh=(("pp", 2), ("sp", 2)), batch=4, seq=10,
                    splits={"seq": ("sp",), "layers": ("pp",)}, stages=((0, 1), (1, 2)),
                    microbatches=2, attention="gather", zigzag=False, warmup=0, repeats=1,
                    phase="decode", context=10, generate=5)  # fmt: skip
    assert_decode_metrics(run_plan(cfg, "gather2xpp2_decode", timeout_s=240), cfg)


def gpu_path_in_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the static step's GPU path (the Triton kernels, the GPU's input-major weights) in
    Triton's interpreter on CPU tensors; skip where there is none (an NVIDIA GPU's machine)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs Triton's interpreter (a machine without an NVIDIA GPU)")
    monkeypatch.setenv("PLANC_DECODE_ATTENTION", "triton_flash_decode")
    monkeypatch.setenv("PLANC_WEIGHT_LAYOUT", "in_major")


@pytest.mark.distributed
@pytest.mark.parametrize("kernel", ["default", "triton_flash_decode"])
def test_static_steps_of_two_microbatches_with_a_vocab_split_generate_hf_tokens(
        run_plan, monkeypatch, kernel):
    """The static decode step (runtime/decode_step.py) with two microbatches of different rows
    (a state and a cache view each), GQA over a tensor-parallel pair with the vocabulary split
    (the greedy token agreed over the pair inside the step), a context that is no multiple of
    the read bucket and more generated tokens than the cache's first bucket would show. With
    "triton_flash_decode" the step's GPU path (the Triton flash-decoding with its split count,
    RoPE and the cache write inside its kernel, the linears' weights stored input-major) runs whole, in Triton's
    interpreter on CPU tensors."""
    if kernel != "default":
        gpu_path_in_the_interpreter(monkeypatch)
    model = ModelDims(arch="llama", layers=2, hidden=64, heads=8, kv_heads=2, head_dim=8,
                      ffn=128, vocab=97)  # fmt: skip
    cfg = RunConfig(model=model, mesh=(("tp", 2),), batch=4, seq=7,
                    splits={"heads": ("tp",), "kv_heads": ("tp",), "ffn": ("tp",),
                            "vocab": ("tp",)},
                    microbatches=2, warmup=1, repeats=1, phase="decode", context=7,
                    generate=6)  # fmt: skip
    m = run_plan(cfg, "static_mb2_decode", timeout_s=240)
    assert_decode_metrics(m, cfg)
    assert m["decode_step"] == "eager (static step)"
    fused = " (RoPE and cache write fused)"  # decode_kernels.rope_flash_decode_triton
    assert m["decode_attention"] == ("grouped_bmm" if kernel == "default" else kernel + fused)
    if kernel == "default":
        assert m["decode_gemm"] == "torch (out_major weights)", m["decode_gemm"]
    else:  # o_proj and down_proj are all-reduced over the pair: not split by the step
        assert m["decode_gemm"] == ("torch (in_major weights), gate/up with SiLU x up in one "
                                    "Triton kernel"), m["decode_gemm"]


@pytest.mark.distributed
def test_static_step_gpu_path_without_a_vocab_split_generates_hf_tokens(run_plan, monkeypatch):
    """The static step's GPU path (Triton flash-decoding with RoPE and the cache write in its kernel, input-major
    weights, and at the step's end the Triton argmax over the whole vocabulary and the one
    kernel that writes the token and advances the counters) in Triton's interpreter: tensor
    parallel heads and ffn, the vocabulary whole on each rank, equal to HF generate."""
    gpu_path_in_the_interpreter(monkeypatch)
    model = ModelDims(arch="llama", layers=2, hidden=64, heads=8, kv_heads=2, head_dim=8,
                      ffn=128, vocab=97)  # fmt: skip
    cfg = RunConfig(model=model, mesh=(("tp", 2),), batch=2, seq=5,
                    splits={"heads": ("tp",), "kv_heads": ("tp",), "ffn": ("tp",)},
                    warmup=0, repeats=1, phase="decode", context=5, generate=6)  # fmt: skip
    m = run_plan(cfg, "static_novocab_decode", timeout_s=240)
    assert_decode_metrics(m, cfg)
    assert m["decode_step"] == "eager (static step)"
    assert m["decode_attention"] == "triton_flash_decode (RoPE and cache write fused)"


@pytest.mark.distributed
def test_static_step_gpu_path_over_two_pipeline_stages_generates_hf_tokens(run_plan, monkeypatch):
    """The static step on a two-stage pipeline with two microbatches, its GPU path in Triton's
    interpreter: each stage's step ends with its exchange (decode_step.Exchange; the hidden
    state on, the tokens back), the first stage ends with the residual add of the split
    down_proj's partials (no norm after it, Elementwise.add_parts) and advances its counters
    in the end kernel; equal to HF generate token for token."""
    gpu_path_in_the_interpreter(monkeypatch)
    model = ModelDims(arch="llama", layers=2, hidden=64, heads=4, kv_heads=2, head_dim=64,
                      ffn=512, vocab=97)  # fmt: skip
    cfg = RunConfig(model=model, mesh=(("pp", 2),), batch=4, seq=5, splits={"layers": ("pp",)},
                    stages=((0, 1), (1, 2)), microbatches=2, warmup=0, repeats=1,
                    phase="decode", context=5, generate=5)  # fmt: skip
    m = run_plan(cfg, "static_pp2_gpu_path_decode", timeout_s=240)
    assert_decode_metrics(m, cfg)
    assert m["decode_step"] == "eager (static step)"
    assert m["decode_attention"] == "triton_flash_decode (RoPE and cache write fused)"
    assert "o_proj over K in 4 and down_proj over K in 4" in m["decode_gemm"], m["decode_gemm"]


@pytest.mark.distributed
@pytest.mark.parametrize("mesh,splits,int8", [
    ((("tp", 2),), {"heads": ("tp",), "kv_heads": ("tp",), "experts": ("tp",)}, False),  # replicated
    ((("tp", 2),), {"heads": ("tp",), "kv_heads": ("tp",), "experts": ("tp",)}, True),
    ((("ep", 2), ("tp", 2)), {"batch": ("ep",), "experts": ("ep",), "heads": ("tp",),
                              "kv_heads": ("tp",), "ffn": ("tp",)}, False),  # ep x ffn slices
])
def test_static_moe_steps_generate_hf_tokens(run_plan, mesh, splits, int8):
    """A Mixtral-family decode whose steps run the MoE block at static shapes (moe.moe_static:
    a dense gate matrix, every local expert over every row) in its collective modes: experts
    over a tensor-parallel pair that holds the same tokens (one all_reduce), and expert
    parallel with each expert's ffn split over tp (the ep group's rows
    gathered, its float32 partials all-reduced, the ffn slices' partials summed over tp), two
    microbatches; equal to HF generate token for token. Plain experts are stacked and run as
    batched GEMMs; int8 ones (CompressedLinear modules) one by one, against the reference
    with the same int8 weights. All experts on one rank ("local") is the replicated mode
    without its all_reduce: tests/distributed/test_moe.py checks it in process."""
    model = ModelDims(arch="mixtral", layers=2, hidden=64, heads=8, kv_heads=2, head_dim=8,
                      ffn=96, vocab=97, experts=4, top_k=2)  # fmt: skip
    ranks = 1
    for _, n in mesh:
        ranks *= n
    cfg = RunConfig(model=model, mesh=mesh, batch=4, seq=6, splits=splits, microbatches=2,
                    warmup=0, repeats=1, phase="decode", context=6, generate=5,
                    compress_int8=int8)  # fmt: skip
    m = run_plan(cfg, f"static_moe_{ranks}{'_int8' if int8 else ''}_decode", timeout_s=240)
    assert_decode_metrics(m, cfg)
    assert m["decode_step"] == "eager (static step)", m["decode_step"]


# what the run's metrics (decode_step.StaticStep.gemm) say of each product the step runs as
# one Triton kernel, by the cost model's op names (cost/time.static_step_triton_products)
RAN_AS_TRITON = {"gate/up with SiLU x up": "gate_up_proj", "q/k/v over K": "qkv_proj",
                 "o_proj over K": "o_proj", "down_proj over K": "down_proj"}


def priced_as_triton(model: ModelDims, batch: int, context: int, generate: int) -> set[str]:
    """The products the cost model prices as Triton kernels for the same model and batch on
    one GPU, from a plan compiled as a user's would be."""
    from planc.compiler.lower import lower
    from planc.cost.time import static_step_triton_products
    from tests.helpers import resolve_text

    text = (f"model m {{\n  arch llama\n  layers {model.layers}\n  hidden {model.hidden}\n"
            f"  heads {model.heads}\n  kv_heads {model.kv_heads}\n  head_dim {model.head_dim}\n"
            f"  ffn {model.ffn}\n  vocab {model.vocab}\n  dtype bf16\n"
            + ("  qkv_bias true\n" if model.features.qkv_bias else "") + "}\n"
            "cluster c {\n  device H100 x 1\n  node 1\n}\n"
            f"workload w {{\n  batch {batch}\n  phase decode\n  context {context}\n"
            f"  generate {generate}\n}}\n"
            "plan p {\n  model m\n  cluster c\n  workload w\n  mesh dp=1\n}\n")
    spec, diags = resolve_text(text)
    assert not diags.has_errors, [d.message for d in diags.items]
    return set(static_step_triton_products(lower(spec.plans[0]), batch))


QWEN2_BIAS = ModelFeatures("qwen2", 1e6, norm_eps=1e-6, qkv_bias=True)


@pytest.mark.distributed
@pytest.mark.parametrize("batch,features,split", [
    (1, ModelFeatures(), "q/k/v over K in 4 and o_proj over K in 4 and down_proj over K in 4"),
    (20, ModelFeatures(), "o_proj over K in 2 and down_proj over K in 2"),  # > 16 rows: in 2
    (1, QWEN2_BIAS, "o_proj over K in 4 and down_proj over K in 4"),  # a biased q/k/v: cuBLAS
])
def test_static_step_gpu_products_on_one_rank_generate_hf_tokens(run_plan, monkeypatch, batch,
                                                                 features, split):
    """The static step's GEMMs as on one GPU (decode_products), in Triton's interpreter: the
    gate/up GEMM with SiLU x up in its Triton kernel, o_proj and down_proj split over K as
    schedule.static_step_product_parts says for the rows (their K 256 and 512 take parts of 64) by
    decode_gemm's Triton kernel, their float32 partials summed by the residual add + norm;
    at one row q/k/v split too (schedule.static_step_qkv_parts), its partials summed by the
    attention kernel; equal to HF generate token for token."""
    gpu_path_in_the_interpreter(monkeypatch)
    arch = "qwen2" if features.qkv_bias else "llama"
    model = ModelDims(arch=arch, layers=2, hidden=64, heads=4, kv_heads=2, head_dim=64,
                      ffn=512, vocab=97, features=features)  # fmt: skip
    cfg = RunConfig(model=model, mesh=(("x", 1),), batch=batch, seq=5, warmup=0, repeats=1,
                    phase="decode", context=5, generate=5)  # fmt: skip
    m = run_plan(cfg, f"static_products_{arch}_b{batch}_decode", timeout_s=240)
    assert_decode_metrics(m, cfg)
    assert m["decode_step"] == "eager (static step)"
    assert m["decode_gemm"] == ("torch (in_major weights), gate/up with SiLU x up in one Triton "
                                f"kernel, {split} (float32 partials, Triton)"), m["decode_gemm"]
    # what ran is what the cost model priced (one rule, layout/schedule, read by both)
    ran = {op for text, op in RAN_AS_TRITON.items() if text in m["decode_gemm"]}
    assert ran == priced_as_triton(model, batch, 5, 5)


# --- units ----------------------------------------------------------------------------------------


def test_lse_merge_of_key_chunks_equals_attention_over_all_keys():
    """Split the keys into uneven parts (one empty), attend over each with the ring's block
    kernel, merge: equal to one softmax over every key."""
    from planc.backends.torch.runtime.ring_attention import attention_with_lse

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 1, 8, generator=g)
    k = torch.randn(3, 2, 11, 8, generator=g) * 2
    v = torch.randn(3, 2, 11, 8, generator=g)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    outs, lses = [], []
    for lo, hi in ((0, 5), (5, 6), (6, 11)):
        o, lse = attention_with_lse(q, k[:, :, lo:hi], v[:, :, lo:hi], causal=False,
                                    scale=8**-0.5, backend="explicit")  # fmt: skip
        outs.append(o)
        lses.append(lse)
    outs.append(torch.zeros_like(outs[0]))  # a part that holds no keys
    lses.append(torch.full_like(lses[0], float("-inf")))
    got = lse_merge(torch.stack(outs), torch.stack(lses))
    err = (got - want).abs().max() / want.abs().max()
    assert err <= 1e-5


def test_lse_merge_weights_parts_by_their_sum_of_exponentials():
    # Two parts with lse log(1) and log(3): weights 1/4 and 3/4, whatever their scale.
    outs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]) + 100
    lses = torch.log(torch.tensor([[1.0], [3.0]])) + 500.0  # large: no overflow
    got = lse_merge(outs, lses)
    assert torch.allclose(got, torch.tensor([[100.25, 100.75]]))


def test_tpot_is_time_after_the_first_token_over_the_tokens_after_it():
    assert tpot_s(latency_s=1.3, ttft_s=0.1, generated=5) == pytest.approx(0.3)
    assert tpot_s(latency_s=0.2, ttft_s=0.2, generated=1) is None
    assert output_tokens_per_s(batch=4, generated=5, latency_s=2.0) == 10.0
    m = decode_times(4, 5, ttfts_s=[0.1, 0.3, 0.2], latencies_s=[1.0, 1.8, 1.4])
    assert m["ttft_ms"] == pytest.approx(200.0) and m["latency_ms"] == pytest.approx(1400.0)
    assert m["tpot_ms"] == pytest.approx(300.0)
    assert m["output_tokens_per_s"] == pytest.approx(20 / 1.4)


@pytest.mark.parametrize(("context", "generate", "sp", "zigzag"),
                         [(16, 8, 4, True), (12, 7, 3, False), (8, 1, 2, True)])  # fmt: skip
def test_sequence_sharded_cache_holds_every_position_once_within_capacity(
    context: int, generate: int, sp: int, zigzag: bool
):
    model = ModelDims(arch="llama", layers=1, hidden=8, heads=2, kv_heads=2, head_dim=4, ffn=8,
                      vocab=16)  # fmt: skip
    cfg = RunConfig(model=model, mesh=(("sp", sp),), batch=1, seq=context,
                    splits={"seq": ("sp",)}, attention="ring", zigzag=zigzag,
                    phase="decode", context=context, generate=generate)  # fmt: skip
    cap = cache_capacity(cfg.context, cfg.generate, sp)
    stored: dict[int, int] = {}  # global position -> rank
    for part in range(sp):
        slots: dict[int, int] = {}  # local slot -> global position
        for t in range(generate):
            s = step_slots(cfg.context, seq_positions(cfg, sp, part), sp, part, t)
            if s.write is not None:
                for slot, pos in zip(range(*s.write), s.positions):
                    assert slot not in slots and slot < cap
                    slots[slot] = pos
            assert s.valid == len(slots)  # attention reads exactly the filled slots
            assert set(slots) == set(range(s.valid))
        for pos in slots.values():
            assert pos not in stored
            stored[pos] = part
    # The prompt and every fed-back token (not the last generated one) are cached once.
    assert sorted(stored) == list(range(context + generate - 1))
