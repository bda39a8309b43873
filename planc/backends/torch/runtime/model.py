"""One rank's sharded model, for either phase: its pipeline stage (embedding, decoder layers,
final norm) and, with phase decode, the stage's KV cache and the last stage's lm_head.

The embedding lives on the first stage (only when the model has a vocabulary; otherwise the
program feeds inputs_embeds), the final RMSNorm on the last, as in Hugging Face's LlamaModel.
With `shard vocab` the embedding holds this rank's rows of the vocabulary (vocab_parallel.py).
A prefill model holds nothing else: no cache, no lm_head.

Decode: the checkpoint is a LlamaForCausalLM / MixtralForCausalLM (tensor names `model.*` and
`lm_head.weight`; reference.save_random_checkpoint writes one when phase is decode). With tied
embeddings it has no `lm_head.weight`: the lm_head is `embed_tokens.weight`, held once by a rank
that also embeds (the same tensor, counted once by weight_bytes) and read by a last stage that
does not. The lm_head [vocab, hidden] is whole on every last-stage rank, so tensor-parallel
peers compute the same logits; with `shard vocab` each holds its rows and the greedy token is
agreed over the group (vocab_parallel.greedy_tokens). As the compiler counts it
(compiler/vocab.py).

The cache is allocated once, at load, for context + generate positions
(planc/layout/schedule.py), zeros:
per layer k and v [rows, kv_heads_local, capacity, head_dim_local] in the run dtype. Bytes per
rank: layers * 2 * rows * kv_heads_local * capacity * head_dim_local * e, the compiler's
kv_cache row. Runs overwrite it from slot 0, so warm-up and timed repeats reuse it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from planc.backends.torch.runtime import decode_kernels, decode_step, vocab_parallel
from planc.backends.torch.runtime.cores import make_layer
from planc.backends.torch.runtime.decode_step import StaticStep
from planc.backends.torch.runtime.dist import RankContext
from planc.backends.torch.runtime.layers import (
    Attention,
    DecoderLayer,
    RMSNorm,
    Rope,
    laid_out,
    load_norm,
)
from planc.backends.torch.runtime.layout import seq_positions
from planc.backends.torch.weights import ShardReader
from planc.layout import mesh
from planc.layout.schedule import Slots, cache_capacity, last_position_part
from planc.layout.vocab import EMBED, LM_HEAD

if TYPE_CHECKING:
    from planc.backends.torch.runtime.textgen import TextBatch


@dataclass(frozen=True)
class PromptEnd:
    """Where the prompt's last position lies in the sequence group: after prefill the part
    that holds it (`holds`, at local index `index`) picks the first token and broadcasts it
    over the group from global rank `src`."""

    holds: bool
    index: int
    src: int


class StageModel(nn.Module):
    """The stage's layers; with phase decode also the KV cache and (last stage) the lm_head.
    `forward` runs the stage on one microbatch: a prefill, or one step of a decode."""

    lm_head: Tensor | None

    def __init__(
        self,
        ctx: RankContext,
        layers: Sequence[DecoderLayer],
        embed: Tensor | None,
        norm: RMSNorm | None,
        lm_head: Tensor | None = None,
    ) -> None:
        super().__init__()
        cfg, lay = ctx.cfg, ctx.layout
        self.layer_ids = lay.stage_layers()
        self.first = lay.is_first_stage
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        if embed is not None:
            self.register_buffer("embed", embed)
        else:
            self.embed = None
        if lm_head is not None and lm_head is not embed:
            self.register_buffer("lm_head", lm_head)
        else:  # none, or tied to the stage's embedding: held (and counted) once, there
            self.lm_head = lm_head
        self.vocab = (lay.vocab_slice, ctx.dim_group("vocab"))
        self.vocab_size = cfg.model.vocab or 0
        # A plain list: the attention blocks are already children of self.layers (weight_bytes
        # counts them once). So is the cache (not a weight): empty unless the phase is decode.
        self.attns = [cast(Attention, layer.attn) for layer in layers]
        self.cache: list[tuple[Tensor, Tensor]] = []
        self.prompt_end: PromptEnd | None = None
        self.seq_group = ctx.dim_group("seq")
        self._static: StaticStep | None = None
        if cfg.phase == "decode":
            self.cache = _allocate_cache(ctx, self.attns)
            sp = lay.parts("seq")
            parts = [seq_positions(cfg, sp, i) for i in range(sp)]
            part, index = last_position_part(parts, cfg.context)
            src = mesh.with_part(cfg.mesh, lay.coords, lay.axes("seq"), part)
            self.prompt_end = PromptEnd(part == lay.part("seq"), index, src)

    def lookup(self, ids: Tensor) -> Tensor:
        """Embeddings of token ids [b, s] (a new tensor), over the vocabulary group if split."""
        assert self.embed is not None
        return vocab_parallel.lookup(ids, self.embed, *self.vocab)

    def embed_inputs(self, x: Tensor) -> Tensor:
        """The residual stream this stage may overwrite: token ids [b, s] -> embeddings, or a
        copy of inputs_embeds (the caller's inputs are reused by the next repeat)."""
        if self.embed is None:
            return x.clone(memory_format=torch.contiguous_format)
        return self.lookup(x)

    def forward(
        self,
        x: Tensor,
        rope: Rope,
        rows: slice | None = None,
        slots: Slots | None = None,
        prefill: bool = True,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x: on the first stage the microbatch's token ids [r, s] (or inputs_embeds, copied),
        else the received hidden [r, s, hidden] (the stage owns it and updates it in place).
        With `rows` (decode), each layer's attention gets those rows of its cache and writes
        the new K/V to `slots`; a decode step (not prefill) attends over the filled slots,
        those `mask` lets each row see (layers.Attention). Returns the hidden to send on, or
        on the last stage its final norm (a new tensor)."""
        if self.first:
            x = self.embed_inputs(x)
        for i, layer in enumerate(self.layers):
            if rows is None:
                x = layer(x, rope)
            else:
                k, v = self.cache[i]
                x = layer(x, rope, (k[rows], v[rows]), slots, prefill, mask)
        if self.norm is not None:
            return self.norm(x)
        return x

    def next_tokens(
        self,
        h: Tensor,
        prefill: bool,
        choose: Callable[[Tensor], Tensor] | None = None,
        last: Tensor | None = None,
    ) -> Tensor:
        """Tokens [r] (int64) from the last stage's final norm h [r, s, hidden], greedy or as
        `choose` picks from logits [r, vocab]: at the prompt's last position after prefill
        (per row: local index `last` [r], -1 where another rank of the sequence group holds
        it, for prompts of different lengths), the new one after a step."""
        assert self.lm_head is not None and self.prompt_end is not None
        if not prefill:
            return self._pick(h[:, -1], choose)
        if last is not None:
            rows = torch.arange(h.shape[0], device=h.device)
            tok = self._pick(h[rows, last.clamp(min=0)], choose)
            if self.seq_group is not None:  # one rank of the group holds each row's last token
                tok = torch.where(last >= 0, tok, 0)
                dist.all_reduce(tok, group=self.seq_group)
            return tok
        end = self.prompt_end
        if end.holds:  # the whole vocabulary group holds it (no seq split on its axes)
            tok = self._pick(h[:, end.index], choose)
        else:
            tok = torch.empty(h.shape[0], dtype=torch.long, device=h.device)
        if self.seq_group is not None:
            dist.broadcast(tok, src=end.src, group=self.seq_group)
        return tok

    def _pick(self, h: Tensor, choose: Callable[[Tensor], Tensor] | None) -> Tensor:
        assert self.lm_head is not None
        return vocab_parallel.pick_tokens(h, self.lm_head, *self.vocab, self.vocab_size, choose)

    def static_step(self, ctx: RankContext, text: TextBatch | None = None) -> StaticStep | None:
        """The static decode steps of this rank (made once), or None when this run's steps run
        in generate's eager rounds (decode_step.static_reason)."""
        if decode_step.static_reason(ctx, self, text) is not None:
            return None
        if self._static is None:
            self._static = decode_step.StaticStep(ctx, self)
        return self._static

    def step_kind(self, ctx: RankContext, text: TextBatch | None = None
                  ) -> dict[str, str | dict[str, str]]:
        """How this run's decode steps run, for the run's metrics: the step ("cuda_graph",
        "eager (static step)" or the eager rounds and why), the attention kernel and the GEMMs
        (a dict per shape when decode_gemm timed them)."""
        static = self.static_step(ctx, text)
        if static is None:
            why = decode_step.static_reason(ctx, self, text)
            return {"decode_step": f"eager rounds ({why})", "decode_attention": "core step"}
        kernel = static.kernel + (" (RoPE and cache write fused)" if static.fused_rope else "")
        step = static.mode + (" + programmatic dependent launch" if static.pdl else "")
        kind = {"decode_step": step, "decode_attention": kernel, "decode_gemm": static.gemm}
        if ctx.layout.n_stages > 1:  # where a stage's send / receive of each step runs
            kind["decode_exchange"] = ("inside the step's graph" if static.exchange_in_graph
                                       and static.use_graphs else "eager, after the step")
        tiles = decode_kernels.tuned_tiles() if static.kernel == "triton_flash_decode" else []
        if tiles:  # on the GPU, once the step has run: the autotuner's pick(s)
            kind["decode_attention_tiles"] = "; ".join(tiles)
        return kind

    def graph_pool_bytes(self) -> int | None:
        return None if self._static is None else self._static.pool_bytes()

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.cache for t in kv)


def _allocate_cache(ctx: RankContext, attns: list[Attention]) -> list[tuple[Tensor, Tensor]]:
    """Every layer's k and v cache of this rank, zeros (the module docstring)."""
    cfg, lay = ctx.cfg, ctx.layout
    cap = cache_capacity(cfg.context, cfg.generate, lay.parts("seq"))
    cache = []
    for attn in attns:
        kv, d = attn.cache_dims
        shape = (len(lay.batch_rows), kv, cap, d)
        cache.append((
            torch.zeros(shape, device=ctx.device, dtype=ctx.dtype),
            torch.zeros(shape, device=ctx.device, dtype=ctx.dtype),
        ))  # fmt: skip
    return cache


def load_stage(ctx: RankContext, reader: ShardReader) -> StageModel:
    """Read this rank's layers and shards (and nothing else) from the checkpoint; with phase
    decode also the last stage's lm_head, and the KV cache is allocated."""
    lay, m = ctx.layout, ctx.cfg.model
    embed = norm = lm_head = None
    if lay.is_first_stage and m.vocab is not None:
        embed = vocab_parallel.read_rows(reader, EMBED, m.vocab, m.hidden, lay.vocab_slice)
    if lay.is_last_stage:
        norm = load_norm(ctx, reader, "norm.weight")
    layers = [make_layer(ctx, reader, i) for i in lay.stage_layers()]
    if lay.is_last_stage and ctx.cfg.phase == "decode":
        assert m.vocab is not None
        tied = m.features.tie_embeddings
        if tied and embed is not None:
            lm_head = embed
        else:
            # Stored as the plain linears are (layers.laid_out: input-major on CUDA), being
            # read only by F.linear; tied to this rank's embedding it keeps the table's layout
            # (the lookup gathers its rows).
            lm_head = laid_out(vocab_parallel.read_rows(
                reader, EMBED if tied else LM_HEAD, m.vocab, m.hidden, lay.vocab_slice))
    return StageModel(ctx, layers, embed, norm, lm_head)


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
