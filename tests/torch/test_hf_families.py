"""Each family's config.json, as transformers' own config class writes it, reads back as the
model block with the class's values; and the defaults planc assumes for keys a config.json
leaves out are the class's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import transformers

from planc.diagnostics import Diagnostics
from planc.models import hf_config
from planc.pipeline import load

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {"rope_theta": 500000.0, "rope_scaling": LLAMA3,
                              "max_position_embeddings": 131072, "tie_word_embeddings": True,
                              "attention_bias": True, "rms_norm_eps": 1e-5}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True, "rope_theta": 1e6}),
    "qwen3": ("Qwen3Config", {"head_dim": 32, "tie_word_embeddings": True}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": ("Qwen3MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2,
                                     "moe_intermediate_size": 32, "norm_topk_prob": True}),
}
REST = """
cluster c {
  device H100 x 1
}
workload w {
  batch 1
  seq   16
}
plan p {
  model m
  cluster c
  workload w
  mesh tp=1
}
"""


def from_hf(directory: Path):  # type: ignore[no-untyped-def]
    plan = directory.parent / "m.plan"
    plan.write_text(f'model m from hf "{directory.name}" {{}}\n{REST}')
    diags = Diagnostics()
    spec, _ = load(plan, diags)
    assert not diags.items, [d.message for d in diags]  # not even an unread-field warning
    return spec.models["m"]


def rope_theta(c: Any) -> float:
    return float((getattr(c, "rope_parameters", None) or {}).get("rope_theta")
                 or c.rope_theta)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_a_config_saved_by_transformers_reads_back_with_the_class_values(tmp_path, family):
    cls_name, extra = CONFIGS[family]
    c = getattr(transformers, cls_name)(**SMALL, **extra)
    c.save_pretrained(tmp_path / "ckpt")
    m = from_hf(tmp_path / "ckpt")
    f = m.features
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    ffn = getattr(c, "moe_intermediate_size", None) or c.intermediate_size
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.ffn, m.vocab) == (
        c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
        head_dim, ffn, c.vocab_size)
    assert (f.family, f.rope_theta, f.norm_eps, f.tie_embeddings) == (
        c.model_type, rope_theta(c), c.rms_norm_eps, c.tie_word_embeddings)
    assert f.qkv_bias == (family == "qwen2" or bool(getattr(c, "attention_bias", False)))
    assert f.qk_norm == family.startswith("qwen3")
    if m.arch == "mixtral":
        assert (m.experts, m.top_k) == (4, c.num_experts_per_tok)
        assert f.norm_topk == bool(getattr(c, "norm_topk_prob", True))
    rope_params = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    if rope_params.get("rope_type", "default") != "default":
        assert dict(f.rope_scaling) == {k: v for k, v in rope_params.items()
                                        if k != "rope_theta"}


@pytest.mark.parametrize("family", sorted(hf_config.FAMILIES))
def test_the_defaults_planc_assumes_are_the_config_class_defaults(family):
    c = transformers.AutoConfig.for_model(family)
    for key, value in hf_config.FAMILIES[family].defaults.items():
        got = rope_theta(c) if key == "rope_theta" else getattr(c, key)
        assert got == value, (family, key)


def test_a_model_saved_by_transformers_records_its_dtype(tmp_path):
    import torch

    c = transformers.Qwen2Config(**SMALL, tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_config(c, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "ckpt")
    m = from_hf(tmp_path / "ckpt")
    assert (m.dtype, m.features.tie_embeddings, m.features.qkv_bias) == ("bf16", True, True)
