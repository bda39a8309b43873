"""A family's one-dimensional parameters are counted: Qwen2's q/k/v biases and Qwen3's q/k norms
are in the placement graph's per-device weights and in the `params` / `weights` claims, which
all equal the tensors transformers' own class writes with save_pretrained (a decode plan on one
device, which holds the lm_head too; a prefill plan computes hidden states and holds none)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from planc.compiler.lower import lower
from planc.cost.claims import claim_value
from tests.helpers import resolve_text

PLAN = """
cluster c {{
  device CPU x 1
}}

model m {{
  family   {family}
  layers   2
  hidden   32
  heads    4
  kv_heads 2
  head_dim 16
  ffn      48
  vocab    96
  dtype    fp32
{lines}
}}

workload w {{
  batch    1
  seq      8
  phase    decode
  context  8
  generate 2
}}

plan p {{
  model    m
  cluster  c
  workload w
  mesh     dp=1
}}
"""


@pytest.mark.parametrize("family,lines,config_class,tied", [
    ("qwen2", "  qkv_bias true", "Qwen2Config", False),
    ("qwen3", "  qk_norm  true\n  tie_embeddings true", "Qwen3Config", True),
])
def test_biases_and_qk_norms_are_counted_as_the_checkpoint_holds_them(
        tmp_path: Path, family: str, lines: str, config_class: str, tied: bool) -> None:
    import transformers
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    spec, diags = resolve_text(PLAN.format(family=family, lines=lines))
    assert not diags.has_errors, [d.message for d in diags]
    plan = spec.plans[0]
    graph = lower(plan)
    config = getattr(transformers, config_class)(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=48, tie_word_embeddings=tied)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(tmp_path))
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
        tensors = [f.get_tensor(k) for k in names]
    assert any(n.endswith(("q_proj.bias", "q_norm.weight")) for n in names)
    numel = sum(t.numel() for t in tensors)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    assert claim_value(plan, graph, "params")[0] == numel
    assert claim_value(plan, graph, "weights")[0] == nbytes
    assert graph.classes[0].memory["weights"] == nbytes
