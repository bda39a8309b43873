"""The independent reference of a decode run: Hugging Face `generate` on the same checkpoint.

The checkpoint's own ...ForCausalLM class (reference.load_hf: AutoModelForCausalLM from its
config.json) in float32 (eager attention), one process, the runtime's prompt ids
(runtime/inputs.py: row b seeded by
(seed, b), context tokens), greedy: do_sample=False, max_new_tokens = min_new_tokens = generate,
use_cache=True, no eos / pad token (the run always generates `generate` tokens). The runtime's
tokens must equal these exactly. For a compressed plan the weights are first replaced by their
compressed versions (reference.compress_weights_), as in prefill.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from planc.backends.torch.reference import compress_weights_, is_compressed, load_hf
from planc.backends.torch.runtime.config import RunConfig
from planc.backends.torch.runtime.inputs import make_inputs


def prompt_ids(cfg: RunConfig, device: torch.device) -> Tensor:
    """The whole batch's prompts [batch, context] (int64), as the ranks draw them."""
    return make_inputs(cfg, range(cfg.batch), None, device, torch.float32)


def reference_generate(cfg: RunConfig, path: str | Path, device: torch.device) -> Tensor:
    """The greedy tokens [batch, generate] (int64) of transformers' generate."""
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
