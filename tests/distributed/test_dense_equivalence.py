"""Every dense strategy (TP, PP, TP x PP, DP x TP, two nodes) equals Hugging Face's LlamaModel.

Each case emits a program, runs it with torchrun (gloo, CPU), and reads rank 0's metrics: rank 0
gathers the full last_hidden_state and compares it with transformers' LlamaModel (eager attention)
loaded from the same safetensors checkpoint, on the same inputs. One torchrun per case.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.distributed

TOL = 1e-4


def assert_matches_reference(m: dict[str, Any], world: int) -> None:
    assert m["world_size"] == world
    assert len(m["ranks"]) == world
    assert m["max_rel_error"] is not None
    assert m["max_rel_error"] <= TOL, m
    assert m["tokens_per_s"] > 0


def test_tensor_parallel_2_with_grouped_query_attention_matches_hf(run_plan, tiny, tp):
    # 8 query heads over 2 kv heads: each rank holds 4 query heads sharing 1 kv head.
    cfg = tiny((("tp", 2),), tp("tp"), kv_heads=2)
    m = run_plan(cfg, "tp2")
    assert_matches_reference(m, 2)
    # Every rank holds half of each projection, the two norms of every layer and the final norm.
    projections = 64 * 64 + 2 * 16 * 64 + 64 * 64 + 3 * 64 * 128  # q, k, v, o, gate, up, down
    per_rank = 4 * (4 * (projections // 2 + 2 * 64) + 64)  # float32 bytes
    assert [r["weight_bytes"] for r in m["ranks"]] == [per_rank, per_rank]


def test_tensor_parallel_4_matches_hf(run_plan, tiny, tp):
    cfg = tiny((("tp", 4),), tp("tp"), kv_heads=4)
    assert_matches_reference(run_plan(cfg, "tp4"), 4)


def test_pipeline_2_uneven_stages_with_embedding_and_causal_lm_checkpoint(run_plan, tiny, tmp_path):
    """Stages [0,1) and [1,4), 2 microbatches, token ids through the embedding on stage 0, and a
    LlamaForCausalLM checkpoint (tensor names prefixed with `model.`) given with --weights."""
    from transformers import LlamaForCausalLM

    from planc.backends.torch.reference import hf_config

    cfg = tiny((("pp", 2),), {"layers": ("pp",)}, vocab=96, stages=((0, 1), (1, 4)), microbatches=2)
    torch.manual_seed(1)
    LlamaForCausalLM(hf_config(cfg.model)).save_pretrained(tmp_path / "ckpt")
    m = run_plan(cfg, "pp2", weights=tmp_path / "ckpt")
    assert_matches_reference(m, 2)
    # Stage 0 holds the embedding and one layer, stage 1 three layers and the final norm.
    w0, w1 = (r["weight_bytes"] for r in m["ranks"])
    layer = 4 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128 + 2 * 64)
    assert (w0, w1) == (4 * 96 * 64 + layer, 3 * layer + 4 * 64)


def test_pipeline_4_one_layer_per_stage_four_microbatches_matches_hf(run_plan, tiny):
    cfg = tiny(
        (("pp", 4),),
        {"layers": ("pp",)},
        kv_heads=2,
        stages=((0, 1), (1, 2), (2, 3), (3, 4)),
        microbatches=4,
    )
    assert_matches_reference(run_plan(cfg, "pp4"), 4)


def test_tensor_x_pipeline_2x2_matches_hf(run_plan, tiny, tp):
    splits = {"layers": ("pp",), **tp("tp")}
    cfg = tiny((("pp", 2), ("tp", 2)), splits, kv_heads=2, stages=((0, 2), (2, 4)), microbatches=2)
    assert_matches_reference(run_plan(cfg, "tp2xpp2"), 4)


def test_data_x_tensor_parallel_2x2_non_causal_matches_hf(run_plan, tiny, tp):
    splits = {"batch": ("dp",), **tp("tp")}
    cfg = tiny((("dp", 2), ("tp", 2)), splits, kv_heads=4, causal=False)
    assert_matches_reference(run_plan(cfg, "dp2xtp2"), 4)


def test_pipeline_over_two_torchrun_nodes_on_loopback_matches_hf(
    tmp_path: Path, free_port: int, tiny
):
    """Two torchrun agents (one process each) meet at a c10d rendezvous on 127.0.0.1; each node
    writes its own random checkpoint (nodes share no filesystem in general)."""
    from planc.backends.torch.emit import emit_program
    from planc.backends.torch.launch import LaunchError, run_program

    cfg = tiny((("pp", 2),), {"layers": ("pp",)}, stages=((0, 2), (2, 4)), microbatches=2)
    prog = tmp_path / "two_nodes.py"
    prog.write_text(emit_program(cfg, plan_name="two nodes", source_file="two_nodes.plan"))
    out = tmp_path / "m.json"
    results: dict[int, Any] = {}

    def node(rank: int) -> None:
        try:
            results[rank] = run_program(
                prog,
                nproc=1,
                device="cpu",
                nnodes=2,
                node_rank=rank,
                timeout_s=120,
                rdzv_endpoint=f"127.0.0.1:{free_port}",
                rdzv_id="two-nodes",
                out_path=out,
            )
        except (LaunchError, OSError, ValueError) as e:  # asserted on the test's thread
            results[rank] = e

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in (0, 1):
        assert not isinstance(results[r], Exception), results[r]
    assert results[0] == results[1]
    assert_matches_reference(results[0], 2)
