"""The independent reference: Hugging Face transformers models built from a RunConfig.

`save_random_checkpoint` writes a seeded random LlamaModel (MixtralModel for arch mixtral; their
...ForCausalLM for a decode run, see reference_decode.py) in save_pretrained's layout, which is
what ranks load when no checkpoint is given, so the safetensors path is always the one
exercised. `reference_output` runs the same checkpoint through transformers (eager attention,
float32) on the same inputs; the runtime's output is compared with it. For a
compressed plan the reference model's weights are first replaced by their dequantised / pruned
versions (compress_weights_), so it is the same compressed model on one device.
Nobody in this project wrote that code, which is the point. transformers is imported lazily:
only the ranks that build or check a model pay for the import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from planc.backends.torch.runtime.config import ModelDims, RunConfig
from planc.backends.torch.runtime.dist import DTYPES
from planc.backends.torch.runtime.inputs import make_inputs

# LlamaConfig needs an embedding table; models fed inputs_embeds get a 1-row placeholder that the
# runtime never reads.
PLACEHOLDER_VOCAB = 1


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def hf_config(m: ModelDims, *, causal: bool = True) -> Any:
    """A transformers config with exactly the knobs the runtime implements."""
    common: dict[str, Any] = {
        "vocab_size": m.vocab if m.vocab is not None else PLACEHOLDER_VOCAB,
        "hidden_size": m.hidden,
        "intermediate_size": m.ffn,
        "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads,
        "num_key_value_heads": m.kv_heads,
        "head_dim": m.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": m.features.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.features.rope_theta},
        # Unit-variance linear outputs (std 1/sqrt(fan_in) for the hidden-sized inputs), so
        # attention scores are O(1) and a wrong rotation or mask changes the output visibly.
        "initializer_range": m.hidden**-0.5,
        "tie_word_embeddings": m.features.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "attention_dropout": 0.0,
    }
    if m.arch == "llama":
        from transformers import LlamaConfig

        cfg: Any = LlamaConfig(attention_bias=False, mlp_bias=False, **common)
    else:
        from transformers import MixtralConfig

        cfg = MixtralConfig(
            num_local_experts=m.experts, num_experts_per_tok=m.top_k, sliding_window=None, **common
        )
    cfg.is_causal = causal  # read by transformers' mask builder; False gives full attention
    return cfg


def _model_class(m: ModelDims, causal_lm: bool = False) -> Any:
    """The base model, or with causal_lm its ...ForCausalLM (embeddings + lm_head, decode)."""
    if m.arch == "llama":
        from transformers import LlamaForCausalLM, LlamaModel

        return LlamaForCausalLM if causal_lm else LlamaModel
    from transformers import MixtralForCausalLM, MixtralModel

    return MixtralForCausalLM if causal_lm else MixtralModel


def checkpoint_key(cfg: RunConfig) -> tuple:  # type: ignore[type-arg]
    """Everything save_random_checkpoint's output depends on: runs with equal keys can share a
    checkpoint (a decode run needs the lm_head, a prefill run's checkpoint has none)."""
    return (cfg.model, cfg.phase == "decode", cfg.causal, cfg.seed, cfg.dtype)


def save_random_checkpoint(cfg: RunConfig, path: str | Path) -> None:
    """Seeded random model in the run dtype: config.json + model.safetensors, as save_pretrained
    writes them.

    model.save_pretrained itself writes nothing on a process whose torch.distributed rank is not
    0, and every node's first process must write its own copy, so the tensors go through
    safetensors directly (HF tensor names, no `model.` prefix, as LlamaModel saves them).
    """
    from safetensors.torch import save_file

    _quiet_transformers()
    torch.manual_seed(cfg.seed)
    # A decode run needs the lm_head: a ...ForCausalLM (tensor names `model.*`, `lm_head.weight`).
    model_class = _model_class(cfg.model, causal_lm=cfg.phase == "decode")
    model = model_class(hf_config(cfg.model, causal=cfg.causal))
    with torch.no_grad():
        # HF initialises norms to ones; random scales make a misplaced norm weight visible.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.to(DTYPES[cfg.dtype])
    model.config.save_pretrained(str(path))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.model.features.tie_embeddings:
        # one tensor, as save_pretrained writes a tied model (state_dict lists it twice)
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(Path(path) / "model.safetensors"), metadata={"format": "pt"})


def is_compressed(cfg: RunConfig) -> bool:
    return cfg.compress_int8 or cfg.compress_mlp_2_4


def compress_weights_(model: Any, cfg: RunConfig) -> None:
    """Replace model's linear weights by what the runtime computes with under cfg's compression:
    int8 (per-output-channel scales over the whole row) on every attention / MLP / expert linear,
    2:4 on the MLP and expert ones, the router and embedding untouched. Each weight is first
    rounded to the run dtype and compressed there, with compress.py's functions, as the ranks
    do; experts are compressed one [out, in] matrix at a time."""
    from planc.backends.torch.runtime.compress import CompressedLinear

    dtype = DTYPES[cfg.dtype]

    def effective(w: Tensor, mlp: bool) -> Tensor:
        lin = CompressedLinear(
            w.to(dtype),
            int8=cfg.compress_int8,
            sparse_2_4=cfg.compress_mlp_2_4 and mlp,
            sparse_kernel=False,
        )
        return lin.dense_weight().to(w.dtype)

    with torch.no_grad():
        for name, p in model.named_parameters():
            attn = ".self_attn." in name and name.endswith("_proj.weight")
            dense_mlp = ".mlp." in name and name.endswith(
                ("gate_proj.weight", "up_proj.weight", "down_proj.weight")
            )
            experts = ".mlp.experts." in name or ".block_sparse_moe.experts." in name
            if experts and p.dim() == 3:  # fused [E, out, in]
                for e in range(p.shape[0]):
                    p[e].copy_(effective(p[e], True))
            elif attn or dense_mlp or experts:
                p.copy_(effective(p, not attn))


def reference_output(
    cfg: RunConfig, path: str | Path, device: torch.device, *, compressed: bool | None = None
) -> Tensor:
    """last_hidden_state [batch, seq, hidden] of transformers on the checkpoint, in float32.

    compressed (default: whether cfg compresses): the model's weights replaced by their
    compressed versions (compress_weights_) before the forward."""
    _quiet_transformers()
    model = _model_class(cfg.model).from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    )
    model.config.is_causal = cfg.causal
    if is_compressed(cfg) if compressed is None else compressed:
        compress_weights_(model, cfg)
    model.to(device).eval()
    # The runtime's inputs, rounded to the run dtype as the runtime sees them.
    x = make_inputs(cfg, range(cfg.batch), None, device, DTYPES[cfg.dtype])
    with torch.inference_mode():
        if cfg.model.vocab is not None:
            out = model(input_ids=x).last_hidden_state
        else:
            out = model(inputs_embeds=x.float()).last_hidden_state
    del model
    return out


def max_errors(out: Tensor, ref: Tensor) -> tuple[float, float]:
    """(max |out - ref|, max |out - ref| / max |ref|), in float32."""
    diff = (out.float() - ref.float()).abs().max().item()
    return diff, diff / max(ref.float().abs().max().item(), 1e-30)
