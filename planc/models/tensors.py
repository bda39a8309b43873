"""The tensors a Hugging Face checkpoint of a model holds: names and full shapes, by family.

Names are those `save_pretrained` writes (`model.layers.{i}.self_attn.q_proj.weight`, ...):
dense families share Llama's; the MoE families name their router and experts as their
`hf_config.Family.moe_names` say; a tied model has no `lm_head.weight`. `planc run --weights`
checks a checkpoint's safetensors headers against this before any rank starts. Torch-free.
"""

from __future__ import annotations

from planc.compiler.spec import ModelSpec
from planc.models.hf_config import FAMILIES

Shape = tuple[int, ...]
# Buffers some older checkpoints carry that no forward pass reads from the file.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def checkpoint_tensors(m: ModelSpec) -> dict[str, Shape]:
    """name -> shape of every tensor a checkpoint of `m` holds, in layer order."""
    f = m.features
    q, kv = m.heads * m.head_dim, m.kv_heads * m.head_dim
    out: dict[str, Shape] = {}
    if m.vocab:
        out["model.embed_tokens.weight"] = (m.vocab, m.hidden)
    for i in range(m.layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (m.hidden,)
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            out[f"{p}self_attn.{name}.weight"] = (rows, m.hidden)
            if f.qkv_bias:
                out[f"{p}self_attn.{name}.bias"] = (rows,)
        out[p + "self_attn.o_proj.weight"] = (m.hidden, q)
        if f.qk_norm:
            out[p + "self_attn.q_norm.weight"] = (m.head_dim,)
            out[p + "self_attn.k_norm.weight"] = (m.head_dim,)
        out[p + "post_attention_layernorm.weight"] = (m.hidden,)
        if m.experts:
            family = FAMILIES.get(f.family, FAMILIES["mixtral"])
            block, gate, up, down = family.moe_names
            out[f"{p}{block}.gate.weight"] = (m.experts, m.hidden)
            for e in range(m.experts):
                x = f"{p}{block}.experts.{e}."
                out[x + gate + ".weight"] = (m.ffn, m.hidden)
                out[x + up + ".weight"] = (m.ffn, m.hidden)
                out[x + down + ".weight"] = (m.hidden, m.ffn)
        else:
            out[p + "mlp.gate_proj.weight"] = (m.ffn, m.hidden)
            out[p + "mlp.up_proj.weight"] = (m.ffn, m.hidden)
            out[p + "mlp.down_proj.weight"] = (m.hidden, m.ffn)
    out["model.norm.weight"] = (m.hidden,)
    if m.vocab and not f.tie_embeddings:
        out["lm_head.weight"] = (m.vocab, m.hidden)
    return out
