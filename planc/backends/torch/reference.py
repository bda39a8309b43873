"""The independent reference: the checkpoint's own Hugging Face class, and the random checkpoints.

`save_random_checkpoint` writes a seeded random model of the plan's family with the family's own
transformers config class (`AutoConfig.for_model(model_type)`: LlamaConfig, Qwen2Config,
Qwen3Config, MistralConfig, MixtralConfig, Qwen3MoeConfig), every ModelFeatures field set, built
by `AutoModelForCausalLM.from_config` and written with the tensor names save_pretrained writes;
ranks load it when no checkpoint is given, so the safetensors path is always the one exercised.
`reference_output` loads a checkpoint with `AutoModel.from_pretrained` (eager attention, float32):
the class its config.json names, never one picked from the plan, so a plan that disagrees with
its checkpoint (another rope theta, biases the plan drops) shows as a difference. For a
compressed plan the reference model's weights are first replaced by their dequantised / pruned
versions (compress_weights_), so it is the same compressed model on one device.
`reference_generate` is a decode run's reference: the same class with its lm_head
(AutoModelForCausalLM), greedy `generate` with the KV cache on the runtime's prompt ids, always
`generate` new tokens (no eos / pad token); the runtime's tokens must equal these exactly.
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
from planc.models.features import ModelFeatures

# A config needs an embedding table; models fed inputs_embeds get a 1-row placeholder that the
# runtime never reads.
PLACEHOLDER_VOCAB = 1


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def hf_config(m: ModelDims, *, causal: bool = True) -> Any:
    """The family's own transformers config (m.features.family is its model_type) with the
    plan's dimensions and every ModelFeatures field."""
    from transformers import AutoConfig

    f = m.features
    kwargs: dict[str, Any] = {
        "vocab_size": m.vocab if m.vocab is not None else PLACEHOLDER_VOCAB,
        "hidden_size": m.hidden,
        "intermediate_size": m.ffn,
        "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads,
        "num_key_value_heads": m.kv_heads,
        "head_dim": m.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": f.norm_eps,
        "rope_parameters": {"rope_type": "default", **dict(f.rope_scaling),
                            "rope_theta": f.rope_theta},
        # Unit-variance linear outputs (std 1/sqrt(fan_in) for the hidden-sized inputs), so
        # attention scores are O(1) and a wrong rotation or mask changes the output visibly.
        "initializer_range": m.hidden**-0.5,
        "tie_word_embeddings": f.tie_embeddings,
        "attention_bias": False,  # Llama's and Qwen3's flag biases o_proj too: see _check_family
        "use_sliding_window": False,
        "sliding_window": None,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "attention_dropout": 0.0,
    }
    if m.arch == "mixtral":
        # num_local_experts: both MoE families map num_experts onto it (attribute_map)
        kwargs.update(num_local_experts=m.experts, num_experts_per_tok=m.top_k,
                      moe_intermediate_size=m.ffn, norm_topk_prob=f.norm_topk,
                      decoder_sparse_step=1, mlp_only_layers=[])
    family = f.family
    if m.arch == "mixtral" and family == ModelFeatures().family:
        family = "mixtral"  # a hand-made mixtral ModelDims with the default (Llama) features
    try:
        cfg = AutoConfig.for_model(family, **kwargs)
    except ValueError as e:
        raise ValueError(f"model family {family!r} is not a transformers model_type: {e}") from None
    cfg.is_causal = causal  # read by transformers' mask builder; False gives full attention
    return cfg


def _check_family(model: Any, m: ModelDims) -> None:
    """The family's transformers class has exactly the plan's features (a qwen2 always has q/k/v
    biases, a qwen3 always q/k norms, a mixtral always renormalises its top-k weights)."""
    names = {n for n, _ in model.named_parameters()}
    f = m.features
    has = {
        "qkv_bias": any(n.endswith("self_attn.q_proj.bias") for n in names),
        "qk_norm": any(n.endswith("self_attn.q_norm.weight") for n in names),
    }
    if m.arch == "mixtral":
        has["norm_topk"] = bool(getattr(model.config, "norm_topk_prob", True))
    wrong = [f"{k} {str(v).lower()}" for k, v in has.items() if v != getattr(f, k)]
    if any(n.endswith("self_attn.o_proj.bias") for n in names):
        wrong.append("o_proj bias")
    if wrong:
        raise ValueError(
            f"family {f.family!r} in transformers has {', '.join(wrong)}, which the plan's model "
            "does not say: set the model's keys as the family has them"
        )


def checkpoint_key(cfg: RunConfig) -> tuple:  # type: ignore[type-arg]
    """Everything save_random_checkpoint's output depends on: runs with equal keys can share a
    checkpoint (a decode run needs the lm_head, a prefill run's checkpoint has none)."""
    return (cfg.model, cfg.phase == "decode", cfg.causal, cfg.seed, cfg.dtype)


def save_random_checkpoint(cfg: RunConfig, path: str | Path) -> None:
    """Seeded random model of the plan's family in the run dtype: config.json and
    model.safetensors with the names save_pretrained writes (tied lm_head left out).

    model.save_pretrained itself writes nothing on a process whose torch.distributed rank is not
    0, and every node's first process must write its own copy, so the tensors go through
    transformers' own reverse name conversion and safetensors directly.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion

    _quiet_transformers()
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(hf_config(cfg.model, causal=cfg.causal))
    _check_family(model, cfg.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # HF initialises norms to ones and biases to zeros; random values make a misplaced
            # norm weight or a dropped bias visible.
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    model.to(DTYPES[cfg.dtype])
    model.config.save_pretrained(str(path))
    state = model.state_dict()
    for tied in getattr(model, "all_tied_weights_keys", {}) or {}:
        state.pop(tied, None)
    state = revert_weight_conversion(model, state)
    tensors = {k: v.contiguous() for k, v in state.items()}
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


def load_hf(path: str | Path, *, causal_lm: bool) -> Any:
    """The checkpoint's own class, as its config.json names it, in float32 with eager attention:
    AutoModelForCausalLM (with the lm_head, for decode) or AutoModel (the base model, whose
    last_hidden_state a prefill run produces). No remote code: the class is transformers' own."""
    from transformers import AutoModel, AutoModelForCausalLM

    _quiet_transformers()
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    return auto.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")


def reference_output(
    cfg: RunConfig,
    path: str | Path,
    device: torch.device,
    *,
    compressed: bool | None = None,
    all_layers: bool = False,
) -> Any:
    """last_hidden_state [batch, seq, hidden] of transformers on the checkpoint, in float32, or
    with all_layers its output_hidden_states (the embeddings, each layer's output but the last,
    then the last_hidden_state).

    compressed (default: whether cfg compresses): the model's weights replaced by their
    compressed versions (compress_weights_) before the forward."""
    _quiet_transformers()
    model = load_hf(path, causal_lm=False)
    model.config.is_causal = cfg.causal
    if is_compressed(cfg) if compressed is None else compressed:
        compress_weights_(model, cfg)
    model.to(device).eval()
    # The runtime's inputs, rounded to the run dtype as the runtime sees them.
    x = make_inputs(cfg, range(cfg.batch), None, device, DTYPES[cfg.dtype])
    with torch.inference_mode():
        given = {"input_ids": x} if cfg.model.vocab is not None else {"inputs_embeds": x.float()}
        result = model(**given, output_hidden_states=all_layers)
    del model
    return result.hidden_states if all_layers else result.last_hidden_state


def prompt_ids(cfg: RunConfig, device: torch.device) -> Tensor:
    """The whole batch's prompts [batch, context] (int64), as the ranks draw them."""
    return make_inputs(cfg, range(cfg.batch), None, device, torch.float32)


def reference_generate(cfg: RunConfig, path: str | Path, device: torch.device) -> Tensor:
    """The greedy tokens [batch, generate] (int64) of transformers' generate: float32, eager
    attention, do_sample=False, exactly `generate` new tokens, use_cache=True."""
    model = load_hf(path, causal_lm=True)
    if is_compressed(cfg):
        compress_weights_(model, cfg)
    model.to(device).eval()
    ids = prompt_ids(cfg, device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=cfg.generate,
            min_new_tokens=cfg.generate,
            use_cache=True,
            pad_token_id=None,
            eos_token_id=None,
        )
    del model
    return out[:, cfg.context :]


def max_errors(out: Tensor, ref: Tensor) -> tuple[float, float]:
    """(max |out - ref|, max |out - ref| / max |ref|), in float32."""
    diff = (out.float() - ref.float()).abs().max().item()
    return diff, diff / max(ref.float().abs().max().item(), 1e-30)
