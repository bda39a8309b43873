"""Lowering: the placement graph's bytes against brute force over the real tensor shapes."""

from __future__ import annotations

import json

import pytest

from planc.compiler.ir import PlacementGraph, ranks_of
from planc.compiler.lower import lower
from tests.helpers import plan_text, resolve_text

MODEL_SHAPES = {  # Hugging Face Llama tensor shapes for hidden 4096, 32/8 heads x 128, ffn 16384
    "q_proj": (32 * 128, 4096), "k_proj": (8 * 128, 4096), "v_proj": (8 * 128, 4096),
    "o_proj": (4096, 32 * 128), "gate_proj": (16384, 4096), "up_proj": (16384, 4096),
    "down_proj": (4096, 16384),
}


def graph_of(body: str) -> PlacementGraph:
    spec, diags = resolve_text(plan_text(body))
    assert not diags.has_errors
    return lower(spec.plans[0])


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (8, 2), (4, 4), (8, 1)])
def test_weights_per_device_equal_the_sum_of_sharded_hf_tensors(tp, pp):
    g = graph_of(f"  mesh pp={pp}, tp={tp}\n  shard layers over pp\n"
                 "  shard heads, kv_heads, ffn over tp\n")
    per_layer = sum(a * b for a, b in MODEL_SHAPES.values()) // tp + 2 * 4096  # norms replicated
    for i, cls in enumerate(g.classes):
        layers = 16 // pp
        final_norm = 4096 if i == len(g.classes) - 1 else 0
        assert cls.memory["weights"] == 2 * (layers * per_layer + final_norm)
        assert cls.count == tp


def test_tensor_parallel_shards_tile_each_tensor_exactly():
    g = graph_of("  mesh tp=8\n  shard heads, kv_heads, ffn over tp\n")
    for s in g.classes[0].shards:
        local = 1
        for x in s.local_shape:
            local *= x
        glob = 1
        for x in s.global_shape:
            glob *= x
        replicated = not s.split
        assert local * (1 if replicated else 8) == glob, s.name


def test_device_classes_expand_to_the_right_ranks():
    g = graph_of("  mesh pp=2, tp=8\n  shard layers over pp\n  shard heads, kv_heads, ffn over tp\n")
    assert [ranks_of(g.mesh, c) for c in g.classes] == [list(range(8)), list(range(8, 16))]
    assert g.mesh.coords(11) == {"pp": 1, "tp": 3} and g.mesh.rank({"pp": 1, "tp": 3}) == 11


def test_collectives_count_one_all_reduce_per_block_per_layer_and_microbatch():
    g = graph_of("  mesh pp=2, tp=8\n  shard layers over pp microbatches 4\n"
                 "  shard heads, kv_heads, ffn over tp\n")
    first = g.classes[0]
    ars = [c for c in first.collectives if c.op == "all_reduce"]
    assert len(ars) == 2 and all(c.calls == 8 * 4 for c in ars)
    tokens = (128 // 4) * 2048
    assert all(c.bytes == tokens * 4096 * 2 and c.link == "intra" for c in ars)
    sends = [c for c in first.collectives if c.op == "send_recv"]
    assert len(sends) == 1 and sends[0].calls == 4
    assert not [c for c in g.classes[1].collectives if c.op == "send_recv"]


def test_buffer_intervals_are_well_formed_and_the_peak_counts_them():
    g = graph_of("  mesh tp=16\n  shard heads, kv_heads, ffn over tp\n")
    cls = g.classes[0]
    n_ops = len(cls.ops)
    for b in cls.buffers:
        assert 0 <= b.live[0] <= b.live[1] < n_ops, b
    live_max = max(sum(b.bytes for b in cls.buffers if b.live[0] <= i <= b.live[1])
                   for i in range(n_ops))
    assert cls.memory["activations"] + cls.memory["buffers"] == live_max
    assert cls.memory["peak"] == live_max + cls.memory["weights"] + cls.memory["reserve"]


def test_the_graph_is_deterministic_json_and_round_trips():
    body = "  mesh pp=2, tp=8\n  shard layers over pp\n  shard heads, kv_heads, ffn over tp\n"
    a, b = graph_of(body), graph_of(body)
    ja = json.dumps(a.model_dump(mode="json"), sort_keys=True)
    assert ja == json.dumps(b.model_dump(mode="json"), sort_keys=True)
    assert PlacementGraph.model_validate_json(ja) == a


def test_int8_and_2_4_compression_count_scales_and_metadata():
    g = graph_of("  mesh tp=1\n  compress weights int8\n  compress mlp sparse 2:4\n")
    by = {s.name.split(".")[-2]: s for s in g.classes[0].shards}
    q = by["q_proj"]
    assert q.format == "int8" and q.bytes == 4096 * 4096 + 4096 * 2  # int8 values + bf16 scales
    up = by["up_proj"]
    n = 16384 * 4096
    assert up.format == "int8+2:4" and up.bytes == n // 2 + n // 8 + 16384 * 2


@pytest.mark.parametrize("sp", [2, 4, 8])
def test_ring_attention_counts_every_block_of_the_sequence(sp):
    """Per rank, causal attention over the whole sequence: s/sp queries x s keys / 2, whatever
    the ring size (the blocks that travel round the ring are work too)."""
    g = graph_of(f"  mesh sp={sp}\n  shard seq over sp attention ring\n")
    ops = {o.name: o for o in g.classes[0].ops}
    flops = sum(o.flops for n, o in ops.items() if n.startswith("attention_ring_step"))
    batch, seq, heads, hd = 128, 2048, 32, 128
    assert flops == 4 * batch * heads * (seq // sp) * seq * hd // 2
