"""The vocabulary matrices of a plan: which device classes hold the embedding and the lm_head,
split how, padded how, and how many bytes each is.

A checkpoint has one vocabulary matrix [vocab, hidden] when its embeddings are tied
(ModelFeatures.tie_embeddings: the lm_head is `embed_tokens.weight`) and two when not
(`embed_tokens.weight`, `lm_head.weight`). The first stage holds the embedding; a decode's last
stage holds the lm_head. Tied, a stage that is both holds the one tensor once; with pipeline
stages both ends hold it, each once. `shard vocab over AXES` splits every vocabulary matrix by
rows over those axes, padded to a multiple of the parts (planc/layout/vocab.py), so each
device holds ceil(vocab / parts) rows of each matrix it holds. Shards are named by the tensor
they read from the checkpoint, so a tied lm_head is an `embed_tokens.weight` shard.
"""

from __future__ import annotations

from planc.compiler.ir import TensorShard
from planc.compiler.spec import PlanSpec
from planc.layout.vocab import EMBED, LM_HEAD, padded_vocab, rows_per_part


def vocab_rows(plan: PlanSpec) -> int:
    """Rows of a vocabulary matrix on one device (padding included); 0 without a vocabulary."""
    m = plan.model
    return rows_per_part(m.vocab, plan.degree("vocab")) if m.vocab else 0


def matrix_bytes(plan: PlanSpec) -> int:
    """Bytes of one vocabulary matrix's shard on one device."""
    m = plan.model
    return vocab_rows(plan) * m.hidden * m.dtype_bytes


def _shard(plan: PlanSpec, name: str) -> TensorShard:
    m = plan.model
    assert m.vocab is not None
    parts = plan.degree("vocab")
    padded = padded_vocab(m.vocab, parts)
    axes = list(plan.axes_of("vocab"))
    return TensorShard(name=name, global_shape=[m.vocab, m.hidden],
                       local_shape=[vocab_rows(plan), m.hidden],
                       split={"0": axes} if parts > 1 else {}, format="dense", dtype=m.dtype,
                       bytes=matrix_bytes(plan), per_layer=False,
                       padded_shape=[padded, m.hidden] if padded != m.vocab else None)


def embed_shard(plan: PlanSpec) -> TensorShard | None:
    """The embedding of the first stage (None: the model feeds inputs_embeds)."""
    return _shard(plan, EMBED) if plan.model.vocab else None


def lm_head_shard(plan: PlanSpec, is_first: bool) -> TensorShard | None:
    """What a decode's last stage adds for its lm_head: None when it has no vocabulary, or when
    the lm_head is tied and this stage already holds the embedding."""
    m = plan.model
    if not m.vocab or (m.features.tie_embeddings and is_first):
        return None
    return _shard(plan, EMBED if m.features.tie_embeddings else LM_HEAD)


def checkpoint_params(plan: PlanSpec) -> int:
    """Parameters of the checkpoint's vocabulary matrices: one when tied, two when not."""
    m = plan.model
    if not m.vocab:
        return 0
    return m.vocab * m.hidden * (1 if m.features.tie_embeddings else 2)


def padding_text(plan: PlanSpec) -> str | None:
    """How the vocabulary is padded over its split, for tables; None when it divides."""
    m = plan.model
    parts = plan.degree("vocab")
    if not m.vocab or parts <= 1 or padded_vocab(m.vocab, parts) == m.vocab:
        return None
    padded = padded_vocab(m.vocab, parts)
    pad = padded - m.vocab
    return (f"vocab {m.vocab} padded to {padded} ({pad} zero row{'s' if pad > 1 else ''}) over "
            f"{parts} parts: {vocab_rows(plan)} rows each")
