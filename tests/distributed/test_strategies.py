"""Every seed strategy, run as an emitted program under torchrun (gloo, CPU), equals Hugging Face.

Ring and all-gather sequence parallelism, the head x head_dim split, Mixtral expert parallelism
(all-to-all, ep x tp, experts on the tensor-parallel axis with and without pipeline stages),
int8 / 2:4 compression and layer-wise partitioning, at world sizes 2 and 4, and a ring of 16.
Rank 0 gathers the full last_hidden_state and compares it with transformers' LlamaModel /
MixtralModel (eager attention, float32) on the same checkpoint and inputs; for a compressed plan
the reference model's weights are first replaced by their dequantised / pruned versions. One
torchrun per case, so the cases are few and each covers several features.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from planc.backends.torch.runtime.config import ModelDims, RunConfig
from planc.layout.compress import weight_bytes

pytestmark = pytest.mark.distributed

TOL = 1e-4
TOL_INT8 = 1e-3  # against the compressed reference
MOE = {"arch": "mixtral", "layers": 2, "hidden": 64, "heads": 8, "kv_heads": 4, "head_dim": 8}
MOE_FFN, EXPERTS = 64, 8


def moe_config(mesh: tuple[tuple[str, int], ...], splits: dict, **run: Any) -> RunConfig:
    """A tiny Mixtral: 8 experts of ffn 64, top-2, 2 layers, inputs_embeds."""
    model = ModelDims(ffn=MOE_FFN, experts=EXPERTS, top_k=2, **MOE)  # type: ignore[arg-type]
    fields: dict[str, Any] = {"batch": 4, "seq": 16, "warmup": 0, "repeats": 1, **run}
    return RunConfig(model=model, mesh=mesh, splits=splits, **fields)


def assert_matches_reference(m: dict[str, Any], world: int, tol: float = TOL) -> None:
    assert m["world_size"] == world
    assert len(m["ranks"]) == world
    assert m["max_rel_error"] is not None
    assert m["max_rel_error"] <= tol, m
    assert m["tokens_per_s"] > 0


def assert_compressed(m: dict[str, Any]) -> None:
    """The compressed run is far from the uncompressed model (compression really happened),
    which the reference followed: it matched to TOL_INT8 above."""
    assert m["compressed_vs_uncompressed_rel_error"] > 10 * TOL_INT8, m


# --- sequence parallel: ring and all-gather attention --------------------------------------------


def test_ring_attention_2_with_embedding_gqa_and_microbatches_matches_hf(run_plan, tiny):
    """Zig-zag causal ring over 2 ranks; token ids go through the embedding on each rank's
    positions, 8 query heads share 2 kv heads, 2 microbatches of 2 rows."""
    cfg = tiny((("sp", 2),), {"seq": ("sp",)}, kv_heads=2, vocab=96, attention="ring",
               microbatches=2)  # fmt: skip
    m = run_plan(cfg, "ring2")
    assert_matches_reference(m, 2)
    assert m["ring_block_kernel"] in ("cpu_flash", "explicit")


def test_ring_attention_4_zigzag_causal_matches_hf(run_plan, tiny):
    cfg = tiny((("sp", 4),), {"seq": ("sp",)}, attention="ring", batch=2, seq=32)
    m = run_plan(cfg, "ring4")
    assert_matches_reference(m, 4)
    # Sequence parallelism replicates the weights: every rank holds the whole model.
    assert len({r["weight_bytes"] for r in m["ranks"]}) == 1


def test_gather_attention_2_contiguous_chunks_matches_hf(run_plan, tiny):
    cfg = tiny((("sp", 2),), {"seq": ("sp",)}, attention="gather", zigzag=False)
    assert_matches_reference(run_plan(cfg, "gather2"), 2)


def test_gather_attention_over_sp2_with_heads_over_tp2_matches_hf(run_plan, tiny, tp):
    """Sequence parallel 2 x tensor parallel 2: K/V of the local heads are gathered over sp,
    o_proj and the MLP reduce over tp."""
    cfg = tiny((("sp", 2), ("tp", 2)), {"seq": ("sp",), **tp("tp")}, attention="gather",
               kv_heads=4, batch=2, seq=32)  # fmt: skip
    assert_matches_reference(run_plan(cfg, "gather2xtp2"), 4)


@pytest.mark.slow  # 16 processes importing torch on 2 cores: about a minute
def test_ring_attention_16_ranks_matches_hf(run_plan, tiny):
    """Seed 002's ring size: seq 64 in 32 zig-zag chunks of 2 tokens."""
    cfg = tiny((("sp", 16),), {"seq": ("sp",)}, attention="ring", batch=1, seq=64)
    assert_matches_reference(run_plan(cfg, "ring16", timeout_s=400), 16)


# --- head x head_dim ---------------------------------------------------------------------------


def test_head_dim_split_2_with_int8_weights_matches_compressed_hf(run_plan, tiny):
    """m = 2 slices of every head, no head groups; int8 o_proj takes non-contiguous columns, its
    scales are those of the whole row (all-reduced max)."""
    splits = {"head_dim": ("m",), "ffn": ("m",)}
    cfg = tiny((("m", 2),), splits, compress_int8=True)
    m = run_plan(cfg, "headdim1x2_int8")
    assert_matches_reference(m, 2, TOL_INT8)
    assert m["compressed_vs_uncompressed_rel_error"] > 0


def test_heads_x_head_dim_2x2_matches_hf(run_plan, tiny):
    """Seed 001's n x m grid: 2 head groups (one kv head each) x 2 head_dim slices, the MLP
    over both axes."""
    splits = {"heads": ("n",), "kv_heads": ("n",), "head_dim": ("m",), "ffn": ("n", "m")}
    m = run_plan(tiny((("n", 2), ("m", 2)), splits, kv_heads=2), "headdim2x2")
    assert_matches_reference(m, 4)
    # A quarter of every projection per rank (the norms are replicated); float32 bytes.
    params = 64 * 64 + 2 * 16 * 64 + 64 * 64 + 3 * 64 * 128  # q, k, v, o, gate, up, down
    layer = 4 * (params // 4 + 2 * 64)
    assert all(r["weight_bytes"] == 4 * layer + 4 * 64 for r in m["ranks"])


# --- Mixtral experts ----------------------------------------------------------------------------


def expert_bytes(experts: int, ffn: int, fmt: str = "dense") -> int:
    """Bytes of `experts` experts' gate, up, down of local width ffn (float32)."""
    return experts * (2 * weight_bytes(ffn, 64, 4, fmt) + weight_bytes(64, ffn, 4, fmt))  # type: ignore[arg-type]


def test_expert_parallel_2_matches_hf_mixtral(run_plan):
    cfg = moe_config((("ep", 2),), {"experts": ("ep",), "batch": ("ep",)})
    m = run_plan(cfg, "ep2")
    assert_matches_reference(m, 2)
    attn = 4 * (64 * 64 + 2 * 32 * 64 + 64 * 64)
    layer = attn + 4 * (EXPERTS * 64 + 2 * 64) + expert_bytes(EXPERTS // 2, MOE_FFN)
    assert all(r["weight_bytes"] == 2 * layer + 4 * 64 for r in m["ranks"])


def test_expert_parallel_4_from_a_save_pretrained_checkpoint_matches_hf(run_plan, tmp_path):
    """MixtralForCausalLM.save_pretrained writes the legacy per-expert names (w1/w3/w2 under
    block_sparse_moe, `model.` prefix); 2 of 8 experts and one batch row per rank."""
    from transformers import MixtralForCausalLM

    from planc.backends.torch.reference import hf_config

    cfg = moe_config((("ep", 4),), {"experts": ("ep",), "batch": ("ep",)})
    torch.manual_seed(4)
    MixtralForCausalLM(hf_config(cfg.model)).save_pretrained(tmp_path / "ckpt")
    assert_matches_reference(run_plan(cfg, "ep4", weights=tmp_path / "ckpt"), 4)


def test_experts_on_the_tensor_parallel_axis_2_replicated_tokens_match_hf(run_plan):
    """`shard heads, kv_heads, experts over tp`: 4 whole experts per rank, no all-to-all."""
    splits = {"heads": ("tp",), "kv_heads": ("tp",), "experts": ("tp",)}
    assert_matches_reference(run_plan(moe_config((("tp", 2),), splits), "moe_tp2"), 2)


def test_moe_baseline_tp2_x_pp2_experts_on_tp_matches_hf(run_plan):
    """The seeds' baseline form (TP 8 x PP 2, experts on tp) in miniature, 2 microbatches."""
    splits = {"layers": ("pp",), "heads": ("tp",), "kv_heads": ("tp",), "experts": ("tp",)}
    cfg = moe_config((("pp", 2), ("tp", 2)), splits, stages=((0, 1), (1, 2)), microbatches=2)
    assert_matches_reference(run_plan(cfg, "moe_tp2xpp2"), 4)


def test_expert_x_tensor_parallel_2x2_int8_and_2_4_matches_compressed_hf(run_plan):
    """ep x tp with every linear int8 and the experts 2:4: each rank holds 4 experts' ffn
    halves; the tp-sliced down projections get the scales of their whole rows."""
    splits = {"experts": ("ep",), "batch": ("ep",), "heads": ("tp",), "kv_heads": ("tp",),
              "ffn": ("tp",)}  # fmt: skip
    cfg = moe_config((("ep", 2), ("tp", 2)), splits, compress_int8=True, compress_mlp_2_4=True)
    m = run_plan(cfg, "ep2xtp2_int8_24")
    assert_matches_reference(m, 4, TOL_INT8)
    assert_compressed(m)
    # fused q/k/v rows of 4 query heads and 2 kv heads; o columns of the 4 heads
    attn = weight_bytes(32 + 2 * 16, 64, 4, "int8") + weight_bytes(64, 32, 4, "int8")
    layer = attn + 4 * (EXPERTS * 64 + 2 * 64) + expert_bytes(4, MOE_FFN // 2, "int8+2:4")
    assert all(r["weight_bytes"] == 2 * layer + 4 * 64 for r in m["ranks"])


# --- compression and layer-wise partitioning ------------------------------------------------------


def test_tensor_parallel_2_int8_and_2_4_matches_compressed_hf(run_plan, tiny, tp):
    """Row-parallel o_proj and down shards quantised with the scales of their whole rows."""
    cfg = tiny((("tp", 2),), tp("tp"), compress_int8=True, compress_mlp_2_4=True)
    m = run_plan(cfg, "tp2_int8_24")
    assert_matches_reference(m, 2, TOL_INT8)
    assert_compressed(m)


def test_layerwise_4_stages_int8_and_2_4_matches_compressed_hf(run_plan, tiny):
    """Seeds 000 / 003: one layer per device, 2 microbatches, compressed weights; each stage
    holds exactly its layer in planc/layout/compress.py's formats."""
    stages = ((0, 1), (1, 2), (2, 3), (3, 4))
    cfg = tiny((("stage", 4),), {"layers": ("stage",)}, stages=stages, microbatches=2,
               compress_int8=True, compress_mlp_2_4=True)  # fmt: skip
    m = run_plan(cfg, "layerwise4")
    assert_matches_reference(m, 4, TOL_INT8)
    assert_compressed(m)
    layer = (
        weight_bytes(64 + 2 * 32, 64, 4, "int8")  # fused q/k/v
        + weight_bytes(64, 64, 4, "int8")  # o
        + weight_bytes(2 * 128, 64, 4, "int8+2:4")  # fused gate/up
        + weight_bytes(64, 128, 4, "int8+2:4")  # down
        + 4 * 2 * 64  # the two norms
    )
    assert [r["weight_bytes"] for r in m["ranks"]] == [layer] * 3 + [layer + 4 * 64]


# --- eight ranks: the seeds' baseline tensor-parallel group and expert parallel at full width ----


@pytest.mark.slow  # 8 processes on 2 cores
def test_tensor_parallel_8_matches_hf(run_plan, tiny, tp):
    """The seeds' baseline TP group: 8 heads and 8 kv heads, one of each per rank; ffn 128 in
    slices of 16."""
    cfg = tiny((("tp", 8),), tp("tp"), kv_heads=8, batch=2)
    m = run_plan(cfg, "tp8", timeout_s=300)
    assert_matches_reference(m, 8)
    assert len({r["weight_bytes"] for r in m["ranks"]}) == 1  # every rank an equal slice


@pytest.mark.slow  # 8 processes on 2 cores
def test_expert_parallel_8_with_16_experts_top2_matches_hf_mixtral(run_plan):
    """Issue 9's expert parallel: 16 experts, 2 per rank, top-2, one batch row per rank."""
    model = ModelDims(ffn=MOE_FFN, experts=16, top_k=2, **MOE)  # type: ignore[arg-type]
    cfg = RunConfig(model=model, mesh=(("ep", 8),), splits={"experts": ("ep",), "batch": ("ep",)},
                    batch=8, seq=16, warmup=0, repeats=1)  # fmt: skip
    m = run_plan(cfg, "ep8", timeout_s=300)
    assert_matches_reference(m, 8)
    attn = 4 * (64 * 64 + 2 * 32 * 64 + 64 * 64)
    layer = attn + 4 * (16 * 64 + 2 * 64) + expert_bytes(2, MOE_FFN)
    assert all(r["weight_bytes"] == 2 * layer + 4 * 64 for r in m["ranks"])


@pytest.mark.slow  # 8 processes on 2 cores
def test_ring_attention_8_zigzag_causal_matches_hf(run_plan, tiny):
    cfg = tiny((("sp", 8),), {"seq": ("sp",)}, attention="ring", batch=1, seq=32)
    assert_matches_reference(run_plan(cfg, "ring8", timeout_s=300), 8)


def test_a_ring_plan_with_one_chunk_per_rank_runs_contiguous_and_matches_hf(run_plan):
    """seq 6 over 2 ranks: a multiple of the ring (2) but not of its 4 zig-zag chunks. planc
    used to refuse it; it runs in contiguous chunks, zig-zag off, from the plan itself."""
    from planc.backends.torch.runconfig import to_run_config
    from planc.compiler.lower import lower
    from tests.helpers import resolve_text

    spec, diags = resolve_text("""
cluster cpu2 { device CPU x 2 }
model tiny { layers 2; hidden 64; heads 8; kv_heads 4; head_dim 8; ffn 128; dtype fp32 }
workload w { batch 2; seq 6 }
plan ring { model tiny; cluster cpu2; workload w; mesh sp=2; shard seq over sp attention ring }
""")
    assert not diags.has_errors, [d.message for d in diags]
    plan = spec.plans[0]
    cfg = to_run_config(plan, lower(plan), warmup=0, repeats=1)
    assert cfg.zigzag is False and cfg.attention == "ring" and cfg.seq == 6
    assert_matches_reference(run_plan(cfg, "ring_plain"), 2)
