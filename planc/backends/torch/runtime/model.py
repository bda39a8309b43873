"""One pipeline stage of the sharded model: (embedding), this stage's decoder layers, (final norm).

The embedding lives on the first stage (only when the model has a vocabulary; otherwise the
program feeds inputs_embeds), the final RMSNorm on the last, as in Hugging Face's LlamaModel.
With `shard vocab` the embedding holds this rank's rows of the vocabulary (vocab_parallel.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from planc.backends.torch.runtime import vocab_parallel
from planc.backends.torch.runtime.cores import make_layer
from planc.backends.torch.runtime.dist import RankContext
from planc.backends.torch.runtime.layers import RMSNorm, Rope, load_norm
from planc.backends.torch.weights import ShardReader
from planc.layout.vocab import EMBED, VocabSlice


class StageModel(nn.Module):
    def __init__(
        self,
        layer_ids: range,
        layers: Sequence[nn.Module],
        embed: Tensor | None,
        norm: RMSNorm | None,
        vocab: tuple[VocabSlice, dist.ProcessGroup | None] | None = None,
    ) -> None:
        super().__init__()
        self.layer_ids = layer_ids
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        if embed is not None:
            self.register_buffer("embed", embed)
        else:
            self.embed = None
        self.vocab = vocab

    def lookup(self, ids: Tensor) -> Tensor:
        """Embeddings of token ids [b, s] (a new tensor), over the vocabulary group if split."""
        assert self.embed is not None and self.vocab is not None
        return vocab_parallel.lookup(ids, self.embed, *self.vocab)

    def embed_inputs(self, x: Tensor) -> Tensor:
        """The residual stream this stage may overwrite: token ids [b, s] -> embeddings, or a
        copy of inputs_embeds (the caller's inputs are reused by the next repeat)."""
        if self.embed is None:
            return x.clone(memory_format=torch.contiguous_format)
        return self.lookup(x)

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        """Run the stage's layers on x, which is updated in place (the stage owns it); on the
        last stage return the final norm of it (a new tensor)."""
        for layer in self.layers:
            x = layer(x, rope)
        if self.norm is not None:
            return self.norm(x)
        return x


def load_stage(ctx: RankContext, reader: ShardReader) -> StageModel:
    """Read this rank's layers and shards (and nothing else) from the checkpoint."""
    lay, m = ctx.layout, ctx.cfg.model
    embed = norm = None
    vocab = (lay.vocab_slice, ctx.dim_group("vocab"))
    if lay.is_first_stage and m.vocab is not None:
        embed = vocab_parallel.read_rows(reader, EMBED, m.vocab, m.hidden, lay.vocab_slice)
    if lay.is_last_stage:
        norm = load_norm(ctx, reader, "norm.weight")
    ids = lay.stage_layers()
    layers = [make_layer(ctx, reader, i) for i in ids]
    return StageModel(ids, layers, embed, norm, vocab)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of weights resident on this rank.

    Modules keep weights as buffers; a module with packed storage (int8 + scales, 2:4 values +
    metadata) reports its own bytes with `stored_bytes()`.
    """
    stored = getattr(module, "stored_bytes", None)
    if callable(stored):
        return int(stored())
    own = sum(b.numel() * b.element_size() for b in module.buffers(recurse=False))
    return own + sum(weight_bytes(c) for c in module.children())
