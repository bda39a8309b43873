"""Single-process checks of the pieces the strategy blocks are built from: sequence positions,
head x head_dim rows, index-list and n-d checkpoint reads, the compressed reference weights, and
the groups created up front. No processes are started (fast)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from planc.backends.torch.runtime.config import ModelDims, RunConfig
from planc.backends.torch.runtime.layout import Layout, seq_positions
from planc.backends.torch.runtime.ring_attention import positions_for_rank
from planc.backends.torch.weights import ShardReader
from planc.layout.headdim import headdim_rows, headdim_shard_indices

SMALL = {"layers": 1, "hidden": 32, "heads": 4, "kv_heads": 2, "head_dim": 8, "ffn": 64}


@pytest.mark.parametrize("sp", [2, 4, 16])
@pytest.mark.parametrize("zigzag", [True, False])
def test_layout_positions_are_the_ones_ring_attention_assumes(tiny, sp, zigzag):
    cfg = tiny((("sp", sp),), {"seq": ("sp",)}, attention="ring", seq=64, zigzag=zigzag)
    for r in range(sp):
        expected = positions_for_rank(64, r, sp, zigzag).tolist()
        assert seq_positions(cfg, sp, r) == expected
        assert Layout(cfg, r).positions == expected


@pytest.mark.parametrize(
    ("heads", "kv_heads", "n", "m"), [(8, 4, 2, 2), (8, 8, 4, 1), (4, 2, 1, 4)]
)
def test_headdim_rows_of_every_rank_equal_the_layout_module_indices(heads, kv_heads, n, m):
    d = 16
    for i in range(n):
        for j in range(m):
            group = range(i * heads // n, (i + 1) * heads // n)
            kv_group = range(i * kv_heads // n, (i + 1) * kv_heads // n)
            assert headdim_rows(group, d, m, j) == headdim_shard_indices(heads, d, n, i, m, j)
            assert headdim_rows(kv_group, d, m, j) == headdim_shard_indices(kv_heads, d, n, i, m, j)


def test_reader_reads_index_lists_in_order_and_nd_blocks(tmp_path):
    w = torch.arange(10 * 6, dtype=torch.float32).reshape(10, 6)
    e = torch.arange(4 * 6 * 3, dtype=torch.float32).reshape(4, 6, 3)
    save_file({"model.a.weight": w, "b": e}, str(tmp_path / "model.safetensors"))
    reader = ShardReader(tmp_path, torch.device("cpu"), torch.float32)
    try:
        rows = [1, 2, 3, 7, 8, 0]
        assert torch.equal(reader.row_indices("a.weight", rows, (10, 6)), w[rows])
        assert torch.equal(reader.col_indices("a.weight", [4, 5, 0], (10, 6)), w[:, [4, 5, 0]])
        block = (slice(1, 3), slice(2, 4), slice(None))
        assert torch.equal(reader.part("b", (4, 6, 3), block), e[1:3, 2:4])
        assert reader.has("a.weight") and reader.has("b") and not reader.has("c")
    finally:
        reader.close()


def test_compressed_reference_changes_exactly_the_linears_as_the_runtime_stores_them():
    """int8 on attention and expert linears, 2:4 on the experts; router and norms untouched; each
    weight equals CompressedLinear's effective weight of it."""
    from transformers import MixtralModel

    from planc.backends.torch.reference import compress_weights_, hf_config
    from planc.backends.torch.runtime.compress import CompressedLinear

    m = ModelDims(arch="mixtral", experts=4, top_k=2, **SMALL)  # type: ignore[arg-type]
    cfg = RunConfig(model=m, mesh=(("x", 1),), batch=1, seq=8, compress_int8=True,
                    compress_mlp_2_4=True)  # fmt: skip
    torch.manual_seed(0)
    model = MixtralModel(hf_config(m))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compress_weights_(model, cfg)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    p = "layers.0."
    assert changed == {
        p + "self_attn.q_proj.weight",
        p + "self_attn.k_proj.weight",
        p + "self_attn.v_proj.weight",
        p + "self_attn.o_proj.weight",
        p + "mlp.experts.gate_up_proj",
        p + "mlp.experts.down_proj",
    }
    o = before[p + "self_attn.o_proj.weight"]
    assert torch.equal(after[p + "self_attn.o_proj.weight"],
                       CompressedLinear(o, int8=True).dense_weight())  # fmt: skip
    down = before[p + "mlp.experts.down_proj"][3]
    want = CompressedLinear(down, int8=True, sparse_2_4=True).dense_weight()
    assert torch.equal(after[p + "mlp.experts.down_proj"][3], want)
    assert (want.view(-1, 4) != 0).sum(-1).max() <= 2  # 2 of every 4 inputs kept


def test_combined_groups_cover_the_head_grid_and_the_replicated_experts():
    from planc.backends.torch.runtime.dist import combined_groups

    dense = ModelDims(arch="llama", **SMALL)  # type: ignore[arg-type]
    grid = RunConfig(model=dense, mesh=(("n", 2), ("m", 2)), batch=1, seq=8,
                     splits={"heads": ("n",), "head_dim": ("m",), "ffn": ("n", "m")})  # fmt: skip
    assert combined_groups(grid) == [("n", "m")]
    moe = ModelDims(arch="mixtral", experts=4, **SMALL)  # type: ignore[arg-type]
    rep = RunConfig(model=moe, mesh=(("tp", 2),), batch=1, seq=8,
                    splits={"heads": ("tp",), "experts": ("tp",), "ffn": ("tp",)})  # fmt: skip
    assert combined_groups(rep) == [("tp",)]


def test_every_strategy_core_is_a_runtime_core():
    from planc.backends.torch.runtime import cores
    from planc.layout.strategies import STRATEGIES

    known = set(cores.ATTENTION) | set(cores.MLP)
    assert all(s.core in known for s in STRATEGIES if s.core)
