"""Who-holds-what arithmetic of the runtime (pure Python, no processes): the expected slices are
worked out by hand from the mesh rules (row-major ranks, last axis fastest, first split axis
outermost)."""

from __future__ import annotations

import dataclasses

from planc.backends.torch.runtime.layout import (
    Layout,
    output_tiles,
    seq_positions,
)
from planc.layout.slices import kv_heads_of as kv_head_range


def test_ranks_are_row_major_with_the_last_axis_fastest(tiny, tp):
    cfg = tiny((("pp", 2), ("tp", 2)), {"layers": ("pp",), **tp("tp")}, stages=((0, 3), (3, 4)))
    coords = [Layout(cfg, r).coords for r in range(4)]
    assert coords == [
        {"pp": 0, "tp": 0},
        {"pp": 0, "tp": 1},
        {"pp": 1, "tp": 0},
        {"pp": 1, "tp": 1},
    ]
    assert [Layout(cfg, r).stage_layers() for r in range(4)] == [range(3)] * 2 + [range(3, 4)] * 2
    assert Layout(cfg, 1).stage_peer(+1) == 3 and Layout(cfg, 2).stage_peer(-1) == 0
    assert [Layout(cfg, r).q_heads for r in range(4)] == [range(4), range(4, 8)] * 2


def test_a_dimension_over_two_axes_is_cut_first_axis_outermost(tiny):
    mesh = (("n", 2), ("m", 2))
    nm = tiny(mesh, {"ffn": ("n", "m")})
    mn = tiny(mesh, {"ffn": ("m", "n")})
    # rank 1 is (n=0, m=1): index 1 of ("n","m") but index 2 of ("m","n"); ffn 128 in 4 parts.
    assert Layout(nm, 1).ffn_cols == range(32, 64)
    assert Layout(mn, 1).ffn_cols == range(64, 96)


def test_kv_heads_are_sliced_with_their_query_group_or_replicated_when_fewer_than_ranks():
    # 8 query heads, 2 kv heads: query head h reads kv head h // 4.
    assert [kv_head_range(8, 2, range(4 * i, 4 * i + 4)) for i in range(2)] == [
        range(1),
        range(1, 2),
    ]
    assert [kv_head_range(8, 2, range(2 * i, 2 * i + 2)) for i in range(4)] == [
        range(1),
        range(1),
        range(1, 2),
        range(1, 2),
    ]
    assert kv_head_range(8, 8, range(2, 4)) == range(2, 4)


def test_zigzag_sequence_parts_pair_an_early_chunk_with_a_late_one(tiny):
    cfg = tiny((("sp", 2),), {"seq": ("sp",)}, attention="ring", zigzag=True)
    assert seq_positions(cfg, 2, 0) == [0, 1, 2, 3, 12, 13, 14, 15]
    assert seq_positions(cfg, 2, 1) == [4, 5, 6, 7, 8, 9, 10, 11]
    plain = dataclasses.replace(cfg, zigzag=False)
    assert seq_positions(plain, 2, 1) == list(range(8, 16))


def test_output_tiles_come_from_the_last_stage_one_copy_per_data_slice(tiny, tp):
    dp_tp = tiny((("dp", 2), ("tp", 2)), {"batch": ("dp",), **tp("tp")})
    assert output_tiles(dp_tp) == [
        (0, range(2), list(range(16))),
        (2, range(2, 4), list(range(16))),
    ]
    pp_tp = tiny((("pp", 2), ("tp", 2)), {"layers": ("pp",), **tp("tp")}, stages=((0, 2), (2, 4)))
    assert output_tiles(pp_tp) == [(2, range(4), list(range(16)))]
    # a layer's output on an earlier stage (runtime/diagnose.py)
    assert output_tiles(pp_tp, stage=0) == [(0, range(4), list(range(16)))]


def test_ring_attention_plans_ask_for_one_cuda_work_queue(tiny, tp):
    from planc.backends.torch.runtime.dist import cuda_env

    ring = tiny((("sp", 2),), {"seq": ("sp",)}, attention="ring")
    gather = tiny((("sp", 2),), {"seq": ("sp",)}, attention="gather")
    assert cuda_env(ring) == {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    assert cuda_env(gather) == {}
    decode = tiny((("sp", 2),), {"seq": ("sp",)}, attention="ring", phase="decode", context=16,
                  generate=4, vocab=96)  # its steps were slower with one queue
    assert cuda_env(decode) == {}
    assert cuda_env(tiny((("tp", 2),), tp("tp"))) == {}
