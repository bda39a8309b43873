"""Torch-free arithmetic of a vocabulary split over the tensor-parallel axis (`shard vocab over
tp`), shared by the compiler (shard shapes, bytes, the padding it reports) and the runtime
(which rows a rank reads, and where its part of the logits starts).

Megatron's VocabParallelEmbedding layout: the vocabulary is padded up to a multiple of the
parts, part i holds the contiguous rows [i * n, (i + 1) * n) with n = ceil(vocab / parts), and
rows at or past `vocab` are zero padding that no token id reaches and no logit may win. Only
the last parts can hold padding (at most parts - 1 rows in all). Megatron additionally pads to a
multiple of 128 for GEMM efficiency; planc pads only to divisibility, so the bytes are the
checkpoint's plus the fewest padding rows. One matrix of the checkpoint (embed_tokens, or
lm_head) is split this way; a tied lm_head is the embedding's own rows. This module must not
import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# Hugging Face names of the vocabulary matrices; a tied checkpoint has only EMBED.
EMBED = "embed_tokens.weight"
LM_HEAD = "lm_head.weight"


def rows_per_part(vocab: int, parts: int) -> int:
    """Rows every part holds, padding included: ceil(vocab / parts)."""
    return -(-vocab // max(1, parts))


def padded_vocab(vocab: int, parts: int) -> int:
    """The vocabulary padded to a multiple of the parts."""
    return rows_per_part(vocab, parts) * max(1, parts)


@dataclass(frozen=True)
class VocabSlice:
    """The rows of the vocabulary one part holds: `real` checkpoint rows from `start`, then
    `pad` zero rows; real + pad = rows_per_part."""

    start: int
    real: int
    pad: int

    @property
    def rows(self) -> range:
        return range(self.start, self.start + self.real)


def vocab_slice(vocab: int, parts: int, part: int) -> VocabSlice:
    n = rows_per_part(vocab, parts)
    start = min(part * n, vocab)
    real = min(n, vocab - start)
    return VocabSlice(part * n, real, n - real)
