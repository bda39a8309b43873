"""`from BASE` on every block kind: BASE's lines apply unless the block sets them itself; an
unknown BASE or a cycle is an error at the `from` name (before the fix `from` was ignored)."""

from __future__ import annotations

from tests.helpers import CLUSTER, MODEL, WORKLOAD, resolve_text

BASES = MODEL + CLUSTER + WORKLOAD + """
plan p {
  model m
  cluster c
  workload w
  mesh pp=2, tp=8
  shard layers over pp microbatches 4
  shard heads, ffn over tp
  require memory <= 90%
  compress weights int8
}
"""


def test_model_workload_cluster_and_plan_inherit_their_base_and_override_it():
    spec, diags = resolve_text(BASES + """
model m8 from m { layers 8 }
cluster c32 from c { device H100 x 32 }
workload w4 from w { batch 4 }
plan q from p {
  model m8
  cluster c32
  workload w4
  mesh pp=4, tp=8
  require memory <= 50%
}
""")
    assert not diags.has_errors, list(diags)
    m8, base = spec.models["m8"], spec.models["m"]
    assert (m8.layers, m8.hidden, m8.kv_heads) == (8, base.hidden, base.kv_heads)
    assert spec.clusters["c32"].count == 32 and spec.clusters["c32"].per_node == 8
    assert (spec.workloads["w4"].batch, spec.workloads["w4"].seq) == (4, spec.workloads["w"].seq)
    q = next(p for p in spec.plans if p.name == "q")
    assert (q.model.name, q.cluster.name, q.workload.name) == ("m8", "c32", "w4")
    assert q.mesh == (("pp", 4), ("tp", 8))
    assert [s.dims for s in q.shards] == [("layers",), ("heads", "ffn")]
    assert q.compress_int8
    assert [(r.metric, float(r.value)) for r in q.requires] == [("memory", 50.0)]


def test_a_shard_line_of_the_block_replaces_the_base_lines_of_its_dimensions():
    spec, diags = resolve_text(BASES + "plan q from p {\n  shard heads over tp\n}\n")
    assert not diags.has_errors, list(diags)
    q = next(p for p in spec.plans if p.name == "q")
    assert [s.dims for s in q.shards] == [("layers",), ("heads",)]


def test_a_device_inherits_an_earlier_or_later_device_block_down_to_its_preset():
    spec, diags = resolve_text("""
cluster c {
  device tight x 8
}
device tight from mid {
  reserve 2 GiB
}
device mid from H200 {
  memory 100 GB
}
""")
    assert not diags.has_errors, list(diags)
    d = spec.clusters["c"].device
    assert (d.memory, d.reserve, d.bandwidth) == (100 * 10**9, 2 * 2**30, 4_800 * 10**9)


def test_an_unknown_base_is_an_error_at_the_from_name_and_its_users_are_skipped():
    spec, diags = resolve_text(BASES + "model m2 from mm { layers 2 }\n"
                               "plan q from p { model m2 }\n")
    errs = [(d.code, d.span.line, d.span.column, d.hint) for d in diags if d.severity == "error"]
    line = BASES.count("\n") + 1
    assert errs == [("E006", line, 15, "did you mean 'm'?")]
    assert [p.name for p in spec.plans] == ["p"]


def test_an_unknown_device_base_is_e002():
    _, diags = resolve_text("device d from H2000 { memory 1 GB }\n")
    assert [(d.code, d.span.column, d.hint) for d in diags if d.severity == "error"] == [
        ("E002", 15, "did you mean 'H200'?")]


def test_a_cycle_of_from_is_reported_once_with_the_chain():
    _, diags = resolve_text("workload a from b { batch 1; seq 8 }\n"
                            "workload b from a { batch 2 }\n"
                            "workload s from s { batch 2 }\n")
    errs = [(d.code, d.span.line, d.message) for d in diags if d.severity == "error"]
    assert errs == [("E007", 2, "workload 'b' inherits from itself: a -> b -> a"),
                    ("E007", 3, "workload 's' inherits from itself: s -> s")]


def test_an_error_in_an_inherited_line_is_reported_once_where_it_is_written():
    _, diags = resolve_text("model m { layers 2; hidden 64; heads 8; ffn 128; layrs 3 }\n"
                            "model m2 from m { layers 4 }\n"
                            "model m3 from m2 { layers 8 }\n")
    assert [(d.code, d.span.line, d.span.column) for d in diags
            if d.severity == "error"] == [("E012", 1, 50)]
