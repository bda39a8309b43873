"""The embedding and the lm_head, end to end in one spawned gloo world of 2 (float32, tiny dims):
the vocabulary split over tensor parallelism (`shard vocab over tp`) with a vocabulary that
divides and one that is padded, and tied embeddings over a two-stage pipeline (the first stage
embeds with `embed_tokens.weight`, the last reads the same tensor as its lm_head; the checkpoint
has no `lm_head.weight`), once from planc's seeded writer and once from transformers'
save_pretrained. Each case is compiled from plan text, so the ranks run what the
placement graph says: the prefill's last_hidden_state equals Hugging Face's base model, the
greedy tokens equal `generate` of the ...ForCausalLM class (which ties the checkpoint's tensors
itself), and every rank's resident weight bytes equal its device class's weights row.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from gloo_spawn import spawn  # tests/distributed is on sys.path (no __init__.py)

from planc.backends.torch.runtime.config import RunConfig
from planc.layout.vocab import VocabSlice
from tests.helpers import plan_text, resolve_text

pytestmark = pytest.mark.distributed

CLUSTER = "\ncluster c {\n  device H100 x 2\n  node 2\n}\n"
WORKLOAD = ("\nworkload w {\n  batch 4\n  phase decode\n  context 8\n  generate 5\n}\n")


def model_text(vocab: int, tied: bool) -> str:
    return (f"\nmodel m {{\n  arch llama\n  layers 2\n  hidden 32\n  heads 4\n  kv_heads 2\n"
            f"  head_dim 8\n  ffn 64\n  vocab {vocab}\n  dtype fp32\n"
            f"  tie_embeddings {'true' if tied else 'false'}\n}}\n")


CASES = {
    "tp2_vocab96": (96, False, "  mesh tp=2\n  shard heads, kv_heads, ffn, vocab over tp\n"),
    "tp2_vocab97_padded_tied": (97, True, ("  mesh tp=2\n"
                                           "  shard heads, kv_heads, ffn, vocab over tp\n")),
    "pp2_tied": (97, True, "  mesh pp=2\n  shard layers over pp microbatches 2\n"),
}
# Cases whose checkpoint transformers writes itself (from_config + save_pretrained), not
# planc's seeded writer: the plan of the case named, the checkpoint of its own config class.
SAVED_BY_HF = {"pp2_tied_save_pretrained": "pp2_tied"}


def compile_plan(vocab: int, tied: bool, body: str) -> tuple[Any, Any, RunConfig]:
    """(plan, placement graph, decode RunConfig with one timed run) of a tiny plan."""
    from planc.backends.torch.runconfig import to_run_config
    from planc.compiler.lower import lower

    spec, diags = resolve_text(plan_text(body, model=model_text(vocab, tied), cluster=CLUSTER,
                                         workload=WORKLOAD))
    assert not diags.has_errors, [d.message for d in diags.items]
    graph = lower(spec.plans[0])
    return spec.plans[0], graph, to_run_config(spec.plans[0], graph, warmup=0, repeats=1)


def compile_case(name: str) -> tuple[RunConfig, dict[int, int], Any]:
    """(decode RunConfig, weights row of each rank, graph) of one case's plan."""
    from planc.compiler.ir import ranks_of

    _, graph, cfg = compile_plan(*CASES[name])
    weights = {r: c.memory["weights"] for c in graph.classes for r in ranks_of(graph.mesh, c)}
    return cfg, weights, graph


def save_pretrained_checkpoint(cfg: RunConfig, path: Path) -> None:
    """A tiny Llama written by transformers: LlamaConfig with the plan's dims and tying."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    m = cfg.model
    config = LlamaConfig(vocab_size=m.vocab, hidden_size=m.hidden, intermediate_size=m.ffn,
                         num_hidden_layers=m.layers, num_attention_heads=m.heads,
                         num_key_value_heads=m.kv_heads, head_dim=m.head_dim,
                         rms_norm_eps=m.features.norm_eps,  # LlamaConfig's default is 1e-6
                         tie_word_embeddings=m.features.tie_embeddings)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(path))


def prefill_of(cfg: RunConfig) -> RunConfig:
    """The same model and mesh running a prefill of the prompt (base model output)."""
    return replace(cfg, phase="prefill", context=0, generate=0)


def _run_case(rank: int, case: dict[str, Any]) -> None:
    from planc.backends.torch.runtime import pipeline, program
    from planc.backends.torch.runtime.dist import make_context
    from planc.backends.torch.runtime.model import weight_bytes

    cpu = torch.device("cpu")
    ctx = make_context(case["cfg"], cpu)
    model = program.load(ctx, case["path"])
    assert weight_bytes(model) == case["weights"][rank], (case["name"], rank)
    tokens = pipeline.gather_tokens(ctx, program.run(ctx, model).output)
    pctx = make_context(prefill_of(case["cfg"]), cpu)
    stage = program.load(pctx, case["path"])
    out = pipeline.gather_output(pctx, program.run(pctx, stage).output)
    if rank == 0:
        assert tokens is not None and out is not None
        assert torch.equal(tokens, case["tokens"]), (case["name"], tokens, case["tokens"])
        err = (out - case["hidden"]).abs().max() / case["hidden"].abs().max()
        assert err <= 1e-5, (case["name"], float(err))


def _greedy_ties(rank: int) -> None:
    """Equal best logits on both parts: the smaller token id wins, as torch.argmax over the
    whole vocabulary; the padding row (zero weights, logit 0) never wins over negative logits;
    the lookup and the gathered logits (sampling) equal the unsplit ones."""
    import torch.distributed as dist

    from planc.backends.torch.runtime.vocab_parallel import all_logits, greedy_tokens, lookup

    full = torch.tensor([[-3.0], [-1.0], [-2.0], [-1.0], [-5.0]])  # vocab 5: ids 1 and 3 tie
    h = torch.tensor([[1.0], [-1.0]])  # row 0 picks 1 (tie with 3), row 1 picks 4
    vs = VocabSlice(start=3 * rank, real=3 if rank == 0 else 2, pad=0 if rank == 0 else 1)
    mine = torch.cat([full, torch.zeros(1, 1)])[3 * rank : 3 * rank + 3]
    group = dist.group.WORLD
    assert greedy_tokens(h, mine, vs, group).tolist() == (full @ h.T).T.argmax(-1).tolist()
    assert greedy_tokens(h, mine, vs, group).tolist() == [1, 4]
    ids = torch.tensor([[0, 4, 2, 3]])
    assert torch.equal(lookup(ids, mine, vs, group), full[ids])
    assert torch.equal(all_logits(h, mine, 5, group), h @ full.T)  # padding dropped


def _worker(rank: int, world: int, cases: list[dict[str, Any]]) -> None:
    _greedy_ties(rank)
    for case in cases:
        _run_case(rank, case)


def test_vocab_parallel_and_tied_embeddings_equal_hf_prefill_and_generate(tmp_path: Path):
    from planc.backends.torch.reference import (
        reference_generate,
        reference_output,
        save_random_checkpoint,
    )

    cpu = torch.device("cpu")
    cases = []
    for name in [*CASES, *SAVED_BY_HF]:
        cfg, weights, _ = compile_case(SAVED_BY_HF.get(name, name))
        path = tmp_path / name
        path.mkdir()
        if name in SAVED_BY_HF:
            save_pretrained_checkpoint(cfg, path)
        else:
            save_random_checkpoint(cfg, path)
        cases.append({"name": name, "cfg": cfg, "weights": weights, "path": str(path),
                      "tokens": reference_generate(cfg, path, cpu),
                      "hidden": reference_output(prefill_of(cfg), path, cpu)})
    spawn(partial(_worker, cases=cases), 2, timeout=300)


def test_a_tied_checkpoint_has_one_vocabulary_matrix_and_the_plan_reads_only_it(tmp_path: Path):
    """What the seeded checkpoint of a tied plan holds, against the graph's shard names."""
    from safetensors import safe_open

    from planc.backends.torch.reference import save_random_checkpoint

    cfg, _, graph = compile_case("pp2_tied")
    save_random_checkpoint(cfg, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    vocab_shards = [[s.name for s in c.shards if s.global_shape == [97, 32]]
                    for c in graph.classes]
    assert vocab_shards == [["embed_tokens.weight"], ["embed_tokens.weight"]]


@pytest.mark.parametrize("tied", [False, True])
def test_params_weights_and_the_table_equal_the_checkpoint_transformers_writes(tmp_path, tied):
    """On one device the per-GPU table, `params` and `weights` all equal what save_pretrained
    wrote: its tensors' elements and bytes (one vocabulary matrix when tied, two when not)."""
    from safetensors import safe_open

    from planc.cost.claims import claim_value

    plan, graph, cfg = compile_plan(96, tied, "  mesh tp=1\n")
    save_pretrained_checkpoint(cfg, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        # a safetensors handle, not a dict: it has keys() but cannot be iterated
        tensors = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118
    numel = sum(t.numel() for t in tensors)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    assert claim_value(plan, graph, "params")[0] == numel
    assert claim_value(plan, graph, "weights")[0] == nbytes
    assert graph.classes[0].memory["weights"] == nbytes
