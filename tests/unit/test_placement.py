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


def test_strategy_collectives_name_known_ops_points_facts_and_sizes():
    from typing import get_args

    from planc.compiler.ir import Collective
    from planc.cost.memory import MESSAGE_BYTES
    from planc.layout.strategies import CALLS, FACTS, POINTS, STRATEGIES, collectives

    ops = get_args(Collective.model_fields["op"].annotation)
    dims = {d for s in STRATEGIES for d in s.dims}
    for s in STRATEGIES:
        for c in s.collectives:
            assert c.op in ops and c.after in POINTS and c.calls in CALLS, (s.name, c)
            assert c.size in MESSAGE_BYTES and set(c.when) <= set(FACTS), (s.name, c)
            assert c.phase in ("prefill", "step") and set(c.over) <= dims, (s.name, c)
    # a decode step's copy of a prefill collective is found by (op, after): one entry each
    prefill = collectives([d for s in STRATEGIES for d in s.dims])
    assert len({(c.op, c.after) for c in prefill}) == len(prefill)
    # a collective two strategies share is listed once, in the order of its point
    assert [c.after for c in collectives(["head_dim"])] == ["o_proj", "attention_scores"]
    assert [c.after for c in collectives(["heads", "head_dim"])] == [
        "embed_tokens", "o_proj", "attention_scores", "weighted_sum", "down_proj"]
    assert [c.after for c in collectives(["experts"])] == [
        "router", "experts", "experts", "weighted_sum"]
    assert collectives(["batch"]) == ()



def test_strategy_memory_keys_name_term_functions():
    """Every record's memory terms name a function of cost/memory.py's tables, under known facts
    and phases; every MoE mode has its terms; a decode step's and a prefill's keys differ only
    where a record says so."""
    from typing import get_args

    from planc.cost.memory import ATTENTION_TERMS, MLP_TERMS, MOE_TERMS, STAGE_TERMS
    from planc.layout.moe import MoeMode
    from planc.layout.strategies import FACTS, STRATEGIES, memory_terms

    for s in STRATEGIES:
        for t in s.memory:
            assert t.key in ATTENTION_TERMS or t.key in STAGE_TERMS, (s.name, t)
            assert set(t.when) <= set(FACTS) and set(t.phases) <= {"prefill", "step"}, (s.name, t)
        # a record's runtime core, when it is an attention core, has terms of its own
        assert s.core in ("", *ATTENTION_TERMS, *MLP_TERMS), s.name
    assert set(MOE_TERMS) == set(get_args(MoeMode)) and set(MLP_TERMS) == {"dense", "moe"}
    assert memory_terms(["seq"], {"attention:ring"}) == ("ring",)
    assert memory_terms(["seq"], {"attention:gather"}, "step") == ("flash_decode",)
    assert memory_terms(["head_dim", "heads"], {"attention:local"}, "step") == ("head_dim",)
    assert memory_terms(["layers", "batch"], ()) == ("send_recv",)
    assert memory_terms(["heads", "experts", "batch"], {"mlp:all_to_all"}) == ()


def test_a_memory_key_added_to_a_record_is_what_the_lowering_counts(monkeypatch):
    """A memory term added to a record changes the layer program and the stage buffers of every
    plan that uses the strategy (where its condition holds), and the memory rows with them."""
    from dataclasses import replace

    from planc.compiler.lower import lower, memory_by_class
    from planc.cost import memory
    from planc.layout import strategies
    from tests.helpers import plan_text, resolve_text

    spec, diags = resolve_text(plan_text("  mesh tp=4\n  shard heads, kv_heads, ffn over tp\n"))
    assert not diags.has_errors
    plan = spec.plans[0]
    before, rows = lower(plan), memory_by_class(plan)
    probe = memory.StageBuffer("probe", "communication", 12345)
    monkeypatch.setitem(memory.STAGE_TERMS, "probe", lambda stage, d: [probe])
    tp = next(s for s in strategies.STRATEGIES if s.name == "tensor")
    added = (strategies.Memory("head_dim"), strategies.Memory("probe", ("mlp:dense",)),
             strategies.Memory("ring", ("attention:ring",)))  # its condition does not hold
    monkeypatch.setattr(strategies, "STRATEGIES", tuple(
        replace(s, memory=(*s.memory, *added)) if s is tp else s for s in strategies.STRATEGIES))
    after = lower(plan)
    names = [b.name for b in after.classes[0].buffers]
    assert set(names) - {b.name for b in before.classes[0].buffers} == {
        "probe", "partial_scores", "probs"}
    assert not any(n.startswith("ring_") for n in names)
    scores = 128 * 8 * 2048 * 2048  # one microbatch of 128 sequences, 32 / 4 heads, seq x seq
    ops = {o.name: o.bytes for o in after.classes[0].ops}
    assert ops["attention_local"] - {o.name: o.bytes for o in before.classes[0].ops}[
        "attention_local"] == scores * (4 + 4 + 2 * 2)
    assert memory_by_class(plan)["all"]["buffers"] == rows["all"]["buffers"] + 12345
    assert after.classes[0].memory == memory_by_class(plan)["all"]


def test_a_strategy_record_is_what_the_lowering_emits(monkeypatch):
    """A collective added to a record appears in the graph of every plan that uses the strategy,
    on the stages its condition holds for, sized from the layer's dims."""
    from dataclasses import replace

    from planc.compiler.lower import lower
    from planc.layout import strategies
    from tests.helpers import plan_text, resolve_text

    pp = next(s for s in strategies.STRATEGIES if s.name == "pipeline")
    extra = strategies.Comm("all_gather", "stage_output", ("layers",), "kv", "layer", ("sends",))
    monkeypatch.setattr(strategies, "STRATEGIES", tuple(
        replace(s, collectives=(*s.collectives, extra)) if s is pp else s
        for s in strategies.STRATEGIES))
    spec, diags = resolve_text(plan_text("  mesh pp=2, tp=4\n  shard layers over pp microbatches 2\n"
                                         "  shard heads, kv_heads, ffn over tp\n"))
    assert not diags.has_errors
    g = lower(spec.plans[0])
    first, last = ([(x.op, x.after, x.calls) for x in c.collectives] for c in g.classes)
    assert first == [("all_reduce", "o_proj", 16), ("all_reduce", "down_proj", 16),
                     ("send_recv", "stage_output", 2), ("all_gather", "stage_output", 16)]
    assert last == [("all_reduce", "o_proj", 16), ("all_reduce", "down_proj", 16)]
    kv = g.classes[0].collectives[-1]
    # K and V of one microbatch's tokens: 64 sequences x 2048 tokens, 2 of 8 kv heads x 128, bf16
    assert kv.bytes == 2 * 64 * 2048 * 2 * 128 * 2 and kv.group_size == 2
