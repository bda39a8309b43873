"""The vocabulary matrices in the placement graph, the memory rows, the tables, the picture and
the `params` / `weights` claims: one matrix when the embeddings are tied, two when not, rows
split and padded by `shard vocab`.

Reference numbers that do not come from planc: Llama-3-8B has 8,030,261,248 parameters (Meta's
model card: 8.03B; HF safetensors index total_size 16,060,522,496 bytes in bf16), and serving
engines log 14.96 GiB of weights per GPU at TP 1 and 7.48 GiB at TP 2 (vLLM's "Loading model
weights took ... GB" lines) for it in bf16.
"""

from __future__ import annotations

import pytest

from planc.compiler.check_structure import check_structure
from planc.compiler.lower import lower
from planc.cost.claims import claim_value
from planc.render.layout import holds
from planc.render.tables import show_text
from tests.helpers import check_text, line_of, plan_text, resolve_text, verdict

GiB = 2**30
L3_PARAMS = 8_030_261_248
L3_VOCAB, L3_HIDDEN = 128256, 4096


def llama3_8b(tied: bool = False, vocab: int = L3_VOCAB) -> str:
    return (f"\nmodel m {{\n  arch llama\n  layers 32\n  hidden 4096\n  heads 32\n  kv_heads 8\n"
            f"  head_dim 128\n  ffn 14336\n  vocab {vocab}\n  dtype bf16\n"
            f"  tie_embeddings {'true' if tied else 'false'}\n}}\n")


DECODE = "\nworkload w {\n  batch 8\n  phase decode\n  context 1024\n  generate 64\n}\n"
PREFILL = "\nworkload w {\n  batch 8\n  seq 1024\n}\n"
CLUSTER = "\ncluster c {\n  device H100 x 8\n  node 8\n}\n"
TP1 = "  mesh tp=1\n"
TP2 = "  mesh tp=2\n  shard heads, kv_heads, ffn over tp\n"
TP2_VOCAB = "  mesh tp=2\n  shard heads, kv_heads, ffn, vocab over tp\n"
PP2 = "  mesh pp=2\n  shard layers over pp\n"


def compiled(body: str, tied: bool = False, vocab: int = L3_VOCAB,  # type: ignore[no-untyped-def]
             workload: str = DECODE):
    text = plan_text(body, model=llama3_8b(tied, vocab), cluster=CLUSTER, workload=workload)
    spec, diags = resolve_text(text)
    assert not diags.has_errors, [d.message for d in diags.items]
    plan = spec.plans[0]
    return plan, lower(plan)


def shard_weights(cls) -> int:  # type: ignore[no-untyped-def]
    """A class's weight bytes summed from its shards (per-layer ones once per layer)."""
    n = cls.layers[1] - cls.layers[0]
    return sum(s.bytes * (n if s.per_layer else 1) for s in cls.shards)


@pytest.mark.parametrize("body,gib", [(TP1, 14.96), (TP2_VOCAB, 7.48)])
def test_llama3_8b_weights_per_gpu_are_what_serving_engines_load(body, gib):
    _, g = compiled(body)
    got = max(c.memory["weights"] for c in g.classes) / GiB
    assert got == pytest.approx(gib, rel=0.01)


def test_without_the_vocab_split_every_tp_rank_holds_both_whole_vocabulary_matrices():
    _, g = compiled(TP2)
    got = g.classes[0].memory["weights"]
    _, split = compiled(TP2_VOCAB)
    # the split saves one half of each of the two [128256, 4096] bf16 matrices
    assert got - split.classes[0].memory["weights"] == L3_VOCAB * L3_HIDDEN * 2


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("body", [TP1, TP2, TP2_VOCAB, PP2])
@pytest.mark.parametrize("workload", [DECODE, PREFILL])
def test_memory_rows_are_the_sum_of_the_class_shards(body, tied, workload):
    _, g = compiled(body, tied, workload=workload)
    for c in g.classes:
        assert c.memory["weights"] == shard_weights(c), (c.id, tied)


@pytest.mark.parametrize("tied,matrices", [(False, 2), (True, 1)])
def test_params_and_weights_claims_count_the_checkpoints_vocabulary_matrices(tied, matrices):
    plan, g = compiled(TP1, tied)
    params = claim_value(plan, g, "params")[0]
    assert params == L3_PARAMS - (2 - matrices) * L3_VOCAB * L3_HIDDEN
    assert claim_value(plan, g, "weights")[0] == 2 * params  # bf16, uncompressed
    # one decoding device holds the whole checkpoint: its table row equals the claim
    assert g.classes[0].memory["weights"] == claim_value(plan, g, "weights")[0]
    names = [s.name for s in g.classes[0].shards if s.global_shape == [L3_VOCAB, L3_HIDDEN]]
    assert names == (["embed_tokens.weight"] if tied else
                     ["embed_tokens.weight", "lm_head.weight"])


def test_tied_embeddings_over_two_stages_are_held_once_by_each_end():
    plan, g = compiled(PP2, tied=True)
    per_stage = [[s.name for s in c.shards if s.global_shape == [L3_VOCAB, L3_HIDDEN]]
                 for c in g.classes]
    assert per_stage == [["embed_tokens.weight"], ["embed_tokens.weight"]]
    both = sum(c.memory["weights"] for c in g.classes)
    # the two ends together hold the checkpoint plus one more copy of the tied matrix
    assert both == claim_value(plan, g, "weights")[0] + L3_VOCAB * L3_HIDDEN * 2


def test_an_indivisible_vocabulary_is_padded_and_the_padding_is_said():
    plan, g = compiled(TP2_VOCAB, vocab=L3_VOCAB + 1)
    embed = next(s for s in g.classes[0].shards if s.name == "embed_tokens.weight")
    assert embed.global_shape == [L3_VOCAB + 1, L3_HIDDEN]
    assert embed.local_shape == [64129, L3_HIDDEN] and embed.padded_shape == [128258, L3_HIDDEN]
    assert embed.split == {"0": ["tp"]}
    assert "vocab 128257 padded to 128258 (1 zero row) over 2 parts: 64129 rows each" in \
        show_text(plan, g)
    assert "vocab 0-64128" in holds(plan, {"tp": 0})
    assert "vocab 64129-128256 + 1 pad" in holds(plan, {"tp": 1})
    # a vocabulary that divides has no padding, and its JSON carries no padded_shape
    _, even = compiled(TP2_VOCAB)
    embed = next(s for s in even.classes[0].shards if s.name == "embed_tokens.weight")
    assert embed.padded_shape is None and "padded_shape" not in embed.model_dump(mode="json")


def test_vocab_parallel_collectives_are_in_the_graph():
    _, g = compiled(TP2_VOCAB)
    ops = {(x.op, x.after): x for x in g.classes[0].collectives}
    embed = ops[("all_reduce", "embed_tokens")]
    assert embed.axes == ["tp"] and embed.bytes == 8 * 1024 * L3_HIDDEN * 2  # [T, hidden] bf16
    assert ("all_reduce", "decode:embed_tokens") in ops
    assert ops[("all_gather", "decode:lm_head")].bytes == 8 * 2 * 8  # (logit, id) float64 a row
    _, unsplit = compiled(TP2)
    assert not [x for x in unsplit.classes[0].collectives
                if x.after.endswith(("embed_tokens", "lm_head"))]


def test_a_padded_vocabulary_split_is_proved_covered_exactly_once():
    text = plan_text(TP2_VOCAB, model=llama3_8b(vocab=L3_VOCAB + 1), cluster=CLUSTER,
                     workload=DECODE)
    result, _ = check_text(text)
    v = verdict(result, "V300", "vocab")
    assert v.status == "proved", v


def test_shard_vocab_without_a_vocabulary_is_e057_at_the_dimension():
    model = llama3_8b().replace(f"  vocab {L3_VOCAB}\n", "")
    text = plan_text(TP2_VOCAB, model=model, cluster=CLUSTER, workload=PREFILL)
    spec, diags = resolve_text(text)
    assert not check_structure(spec.plans[0], diags)
    d = next(d for d in diags.items if d.code == "E057")
    assert d.span.line == line_of(text, "vocab over tp")
    assert d.span.column == text.splitlines()[d.span.line - 1].index("vocab over") + 1
    assert d.hint and "add `vocab N`" in d.hint


def test_vocab_on_the_pipeline_axis_is_e050():
    spec, diags = resolve_text(plan_text("  mesh pp=2\n  shard layers, vocab over pp\n",
                                         model=llama3_8b(), cluster=CLUSTER, workload=PREFILL))
    assert not check_structure(spec.plans[0], diags)
    assert [d.code for d in diags.items] == ["E050"]
