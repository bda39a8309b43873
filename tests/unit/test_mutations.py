"""Mutation suite: seeded plan bugs, each caught with the right code at the right line.

Every case starts from a plan the verifier proves (checked below, so a mutation is the only
difference) and applies one textual change that a user could plausibly make.
"""

from __future__ import annotations

import pytest

from planc.compiler.check_structure import check_structure
from planc.diagnostics import Diagnostics
from planc.pipeline import check_plan
from tests.helpers import CLUSTER, MODEL, line_of, resolve_text

DENSE = CLUSTER + MODEL + """
workload w {
  batch 64
  seq   4096
}
plan p {
  model    m
  cluster  c
  workload w
  mesh     pp=2, tp=8
  shard    layers over pp microbatches 8
  shard    heads, kv_heads, ffn over tp
  require  memory <= 90%
  require  throughput >= 1000 tokens/s
}
"""

MOE = """
cluster c {
  device H100 x 16
  node 8
}
model moe {
  arch     mixtral
  layers   4
  hidden   4096
  heads    32
  kv_heads 8
  head_dim 128
  ffn      14336
  experts  16
  top_k    2
  dtype    bf16
}
workload w {
  batch 64
  seq   4096
}
plan p {
  model    moe
  cluster  c
  workload w
  mesh     ep=16
  shard    experts, batch over ep
}
"""

RING = DENSE.replace("  mesh     pp=2, tp=8\n  shard    layers over pp microbatches 8\n"
                     "  shard    heads, kv_heads, ffn over tp\n",
                     "  mesh     sp=16\n  shard    seq over sp attention ring\n")

CACHE = """
cluster c {
  device H100 x 16
}
model small {
  layers   16
  hidden   1536
  heads    12
  head_dim 128
  ffn      6144
  dtype    bf16
}
workload w {
  batch 8
  seq   128
}
plan p {
  model    small
  cluster  c
  workload w
  mesh     stage=16
  shard    layers over stage fit cache microbatches 8
  compress weights int8
}
"""

HEADDIM = DENSE.replace("  mesh     pp=2, tp=8\n  shard    layers over pp microbatches 8\n"
                        "  shard    heads, kv_heads, ffn over tp\n",
                        "  mesh     n=4, m=4\n  shard    heads, kv_heads over n\n"
                        "  shard    head_dim over m\n  shard    ffn over n, m\n").replace(
    "seq   4096", "seq   512").replace("batch 64", "batch 4")

BASES = {"dense": DENSE, "moe": MOE, "ring": RING, "cache": CACHE, "headdim": HEADDIM}

# (name, base, old, new, code, the text of the line the report must point at)
MUTATIONS = [
    ("heads % tp", "dense", "pp=2, tp=8", "pp=4, tp=3", "V201", "shard    heads"),
    ("kv_heads % tp", "dense", "kv_heads 8", "kv_heads 4", "V202", "shard    heads"),
    ("ffn % tp", "dense", "ffn      16384", "ffn      16380", "V204", "shard    heads"),
    ("layers % pp", "dense", "layers   16", "layers   15", "V208", "shard    layers"),
    ("microbatches do not divide the batch", "dense", "microbatches 8", "microbatches 5",
     "V209", "shard    layers"),
    ("device count above the cluster", "dense", "pp=2, tp=8", "pp=4, tp=8", "V100", "mesh"),
    ("a stage over HBM", "dense", "seq   4096", "seq   262144", "V400", "mesh"),
    ("require memory too tight", "dense", "memory <= 90%", "memory <= 2%", "V401",
     "require  memory"),
    ("claim above the roofline", "dense", "throughput >= 1000 tokens/s",
     "throughput >= 1e9 tokens/s", "V700", "require  throughput"),
    ("latency claim below the bound", "dense", "throughput >= 1000 tokens/s",
     "latency <= 0.001 ms", "V700", "require  latency"),
    ("parameter count miscounted", "dense", "throughput >= 1000 tokens/s",
     "params == 30e9", "V600", "require  params"),
    ("an axis for incompatible dimensions", "dense", "shard    layers over pp microbatches 8",
     "shard    layers over tp", "E050", "shard    heads"),
    ("a dimension sharded twice", "dense", "shard    layers over pp microbatches 8",
     "shard    heads over pp", "E035", "shard    heads, kv_heads"),
    ("an axis missing from the mesh", "dense", "ffn over tp", "ffn over tq", "E033",
     "shard    heads"),
    ("kv_heads split apart from heads", "dense", "shard    heads, kv_heads, ffn over tp",
     "shard    heads, ffn over tp\n  shard    kv_heads over pp", "E052", "kv_heads over pp"),
    ("overlapping explicit stages", "dense", "microbatches 8",
     "microbatches 8 stages [0..8], [8..15]", "V301", "shard    layers"),
    ("explicit stages miscounted", "dense", "microbatches 8",
     "microbatches 8 stages [0..3], [4..7], [8..15]", "V301", "shard    layers"),
    ("experts % ep", "moe", "experts  16", "experts  12", "V205", "shard    experts"),
    ("expert parallel without the batch", "moe", "experts, batch over ep", "experts over ep",
     "E054", "shard    experts"),
    ("experts on a dense model", "dense", "shard    heads, kv_heads, ffn over tp",
     "shard    heads, kv_heads, ffn, experts over tp", "E053", "shard    heads"),
    ("top_k above the expert count", "moe", "top_k    2", "top_k    32", "E016", "top_k"),
    # 4040 is not a multiple of 16 (4048 is: it runs in contiguous chunks, without zig-zag)
    ("seq % ring", "ring", "seq   4096", "seq   4040", "V207", "shard    seq"),
    ("head_dim split breaks RoPE pairs", "headdim", "head_dim 128", "head_dim 36",
     "V310", "shard    head_dim"),
    ("a stage over L2", "cache", "compress weights int8", "", "V500", "shard    layers"),
    ("compressed bytes miscounted", "cache", "compress weights int8",
     "compress weights int8\n  require  layer_weights == 75.5 MB", "V600",
     "require  layer_weights"),
]


def findings(text: str) -> list[tuple[str, int]]:
    """(code, line) of every error diagnostic and violated obligation."""
    spec, diags = resolve_text(text)
    out = [(d.code, d.span.line) for d in diags.items if d.severity == "error" and d.span]
    for plan in spec.plans:
        d2 = Diagnostics()
        if not check_structure(plan, d2):
            out += [(d.code, d.span.line) for d in d2.items if d.severity == "error" and d.span]
            continue
        result = check_plan(plan, d2)
        out += [(v.obligation.code, v.obligation.span.line) for v in result.verdicts
                if v.status == "violated" and v.obligation.span]
    return out


@pytest.mark.parametrize("base", sorted(BASES))
def test_every_base_plan_is_proved(base):
    assert findings(BASES[base]) == []


def test_the_suite_is_large_enough():
    assert len(MUTATIONS) >= 20


@pytest.mark.parametrize("name,base,old,new,code,needle", MUTATIONS,
                         ids=[m[0] for m in MUTATIONS])
def test_mutation_is_caught_with_code_and_line(name, base, old, new, code, needle):
    text = BASES[base]
    assert old in text, f"mutation {name!r} does not apply"
    mutated = text.replace(old, new, 1)
    got = findings(mutated)
    expected_line = line_of(mutated, needle)
    assert (code, expected_line) in got, f"{name}: expected {code} at line {expected_line}, got {got}"


RUNTIME_LIMITS = [
    ("head_dim and seq split together", "headdim", "  shard    ffn over n, m",
     "  shard    ffn over n, m\n  shard    seq over m attention ring", "E056",
     "shard    head_dim"),
    ("2:4 on a local ffn width not divisible by 8", "dense", "ffn      16384",
     "ffn      16392", "V211", "compress mlp"),
    ("heads not a multiple of kv_heads", "dense", "kv_heads 8", "kv_heads 12", "E018",
     "kv_heads 12"),
    ("gather needs the sequence to split over the ring too", "ring", "attention ring\n",
     "attention gather\n", "V207", "shard    seq"),
]


@pytest.mark.parametrize("name,base,old,new,code,needle", RUNTIME_LIMITS,
                         ids=[m[0] for m in RUNTIME_LIMITS])
def test_what_the_runtime_cannot_run_is_rejected_by_the_verifier(name, base, old, new, code,
                                                                  needle):
    text = BASES[base]
    if name.startswith("2:4"):
        text = text.replace("  require  memory <= 90%\n",
                            "  require  memory <= 90%\n  compress mlp sparse 2:4\n")
    if name.startswith("gather"):
        text = text.replace("seq   4096", "seq   4040")
    assert old in text
    mutated = text.replace(old, new, 1)
    got = findings(mutated)
    assert (code, line_of(mutated, needle)) in got, f"{name}: {got}"
