"""planc/layout, the single source of placement: mesh coordinates and groups, the three slice
kinds (concrete indices, and the inverse the verifier uses symbolically), and the MoE mode."""

from __future__ import annotations

import pytest

from planc.layout import mesh, slices
from planc.layout.moe import moe_mode


def test_ranks_are_row_major_and_groups_partition_the_mesh():
    m = (("pp", 2), ("dp", 3), ("tp", 2))
    assert [mesh.coords(m, r) for r in (0, 1, 2, 11)] == [
        {"pp": 0, "dp": 0, "tp": 0}, {"pp": 0, "dp": 0, "tp": 1}, {"pp": 0, "dp": 1, "tp": 0},
        {"pp": 1, "dp": 2, "tp": 1}]
    assert all(mesh.rank(m, mesh.coords(m, r)) == r for r in range(12))
    assert mesh.groups(m, ("tp",))[:2] == [[0, 1], [2, 3]]
    assert mesh.group(m, 7, ("pp", "tp")) == [0, 1, 6, 7]  # rank 7 = (pp 1, dp 0, tp 1)
    flat = sorted(r for g in mesh.groups(m, ("dp", "tp")) for r in g)
    assert flat == list(range(12))


@pytest.mark.parametrize("kind,size,parts", [
    ("even", 12, 4), ("even", 10, 3), ("zigzag", 16, 2), ("zigzag", 64, 4),
    ("rope_paired", 16, 4), ("rope_paired", 128, 2)])
def test_every_index_is_held_by_exactly_the_part_owner_names(kind, size, parts):
    held = {i: p for p in range(parts) for i in slices.indices(kind, size, parts, p)}
    assert sorted(held) == list(range(size))
    assert sum(len(slices.indices(kind, size, parts, p)) for p in range(parts)) == size
    assert all(slices.owner(kind, size, parts, i) == p for i, p in held.items())


def test_zigzag_pairs_an_early_chunk_with_its_mirror():
    assert slices.indices("zigzag", 16, 2, 0) == [0, 1, 2, 3, 12, 13, 14, 15]
    assert slices.indices("zigzag", 16, 2, 1) == [4, 5, 6, 7, 8, 9, 10, 11]
    assert slices.slice_kind("seq", "ring") == slices.slice_kind("seq", "gather") == "zigzag"
    assert slices.slice_kind("seq", "local") == "even"


def test_rope_pairs_stay_on_one_part():
    for p in range(4):
        dims = slices.indices("rope_paired", 32, 4, p)
        assert all(d + 16 in dims for d in dims if d < 16)


def test_moe_mode_from_the_axes_of_experts_ffn_and_tokens():
    assert moe_mode((), (), ()) == "local"
    assert moe_mode(("ep",), (), ("ep",)) == "all_to_all"
    assert moe_mode(("ep",), ("tp",), ("ep",)) == "all_to_all"
    assert moe_mode(("tp",), ("tp",), ()) == "replicated"
    assert moe_mode((), ("tp",), ()) == "replicated"
    with pytest.raises(ValueError):
        moe_mode(("dp", "tp"), (), ("dp",))


def test_strategy_records_are_consistent_with_the_dimensions_and_codes():
    from planc.layout.strategies import DIVISIBILITY, STRATEGIES, compatible
    from planc.output.rules import RULES

    assert len({s.role for s in STRATEGIES}) == len({s.name for s in STRATEGIES}) == len(STRATEGIES)
    for s in STRATEGIES:
        assert {d for d, _ in s.divides} <= set(s.dims), s.name
        assert all(code in RULES for _, code in s.divides), s.name
    assert [d for _, d in DIVISIBILITY] == [
        "heads", "kv_heads", "head_dim", "ffn", "experts", "batch", "seq", "layers"]
    assert compatible(frozenset({"ep", "dp"})) and compatible(frozenset({"ep", "tp"}))
    assert compatible(frozenset({"tp", "hd"}))
    assert not compatible(frozenset({"tp", "pp"})) and not compatible(frozenset({"ep", "dp", "tp"}))
    assert not compatible(frozenset({"sp", "dp"}))
