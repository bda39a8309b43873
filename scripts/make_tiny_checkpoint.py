"""Write a tiny random Llama checkpoint with a tokenizer of its own, for `planc generate` without
the model hub: config.json + model.safetensors (AutoModelForCausalLM.from_config(LlamaConfig),
save_pretrained) and a BPE tokenizer trained on a few sentences with `tokenizers`, saved with
transformers' PreTrainedTokenizerFast.save_pretrained beside it.

The default dims are the `tiny` model of specs/local/decode_*.plan (4 layers, hidden 64, 8 heads
of 8, 4 kv heads, ffn 128, vocab 128):

    python scripts/make_tiny_checkpoint.py tiny-llama
    planc generate specs/local/decode_tp2.plan --weights tiny-llama --prompt "the cat sat"

The weights are random (seeded), so the text is gibberish; what it shows is the path from
prompts to text, and that planc's tokens equal Hugging Face generate's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "a dog ran to the park with a red ball",
    "planc places each layer of the model on the devices of the mesh",
    "tensor parallel ranks hold slices of every weight matrix",
    "the quick brown fox jumps over the lazy dog",
    "we write plans, prove that they fit, and run them",
]
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3: unk, bos, eos, pad


def train_tokenizer(vocab: int) -> Any:
    """A Llama-like BPE tokenizer (metaspace words, BOS prepended) of at most `vocab` ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL, show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>",
    )


def make_tiny_checkpoint(
    out: str | Path,
    *,
    vocab: int = 128,
    layers: int = 4,
    hidden: int = 64,
    heads: int = 8,
    kv_heads: int = 4,
    head_dim: int = 8,
    ffn: int = 128,
    seed: int = 0,
) -> Path:
    """Write the checkpoint and its tokenizer to `out`; returns the directory."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.utils import logging

    logging.disable_progress_bar()  # save_pretrained's bar, for a file of kilobytes
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        # Unit-variance activations: a random model whose greedy choices are far from ties.
        initializer_range=hidden**-0.5,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="directory to write (created)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    path = make_tiny_checkpoint(a.out, seed=a.seed)
    print(f"wrote {path}: {', '.join(sorted(f.name for f in Path(path).iterdir()))}")


if __name__ == "__main__":
    main()
