"""One rank's view of a RunConfig's placement: its coordinates and every slice it owns.

The arithmetic is planc/layout's (mesh coordinates, even / zig-zag slices, stage ranges), the
same the compiler lowers and the verifier proves; this module only applies it to one rank.
"""

from __future__ import annotations

from dataclasses import dataclass

from planc.backends.torch.runtime.config import RunConfig
from planc.layout import mesh, slices
from planc.layout.schedule import micro_rows
from planc.layout.stages import stage_layers
from planc.layout.vocab import VocabSlice, vocab_slice


def seq_kind(cfg: RunConfig) -> slices.SliceKind:
    """How the sequence is laid out over its parts (zig-zag under ring / gather attention)."""
    return slices.slice_kind("seq", cfg.attention) if cfg.zigzag else "even"


def seq_positions(cfg: RunConfig, parts: int, i: int) -> list[int]:
    """Global token positions held by sequence part i of `parts` (planc/layout/slices.py)."""
    return slices.indices(seq_kind(cfg), cfg.seq, parts, i)


@dataclass(frozen=True)
class Layout:
    """One rank's view of the plan: its coordinates and every slice it owns."""

    cfg: RunConfig
    rank: int

    @property
    def coords(self) -> dict[str, int]:
        return mesh.coords(self.cfg.mesh, self.rank)

    def axes(self, dim: str) -> tuple[str, ...]:
        return self.cfg.splits.get(dim, ())

    def parts(self, dim: str) -> int:
        return mesh.parts(self.cfg.mesh, self.axes(dim))

    def part(self, dim: str) -> int:
        return mesh.part(self.cfg.mesh, self.coords, self.axes(dim))

    # Pipeline ------------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return self.parts("layers")

    @property
    def stage(self) -> int:
        return self.part("layers")

    def stage_layers(self, stage: int | None = None) -> range:
        s = self.stage if stage is None else stage
        return stage_layers(self.cfg.stages, self.cfg.model.layers, s)

    @property
    def is_first_stage(self) -> bool:
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.n_stages - 1

    def stage_peer(self, delta: int) -> int:
        """Rank of the same tensor/data coordinates on stage `stage + delta`."""
        return mesh.with_part(self.cfg.mesh, self.coords, self.axes("layers"), self.stage + delta)

    def decode_peers(self) -> tuple[int | None, int | None]:
        """(where a decode round sends this stage's output, where its input comes from): the
        next stage and the previous one; the last stage sends its tokens back to the first,
        which receives them there. None on one stage."""
        p, k = self.n_stages, self.stage
        if p == 1:
            return None, None
        return (self.stage_peer(+1) if k < p - 1 else self.stage_peer(1 - p),
                self.stage_peer(-1) if k > 0 else self.stage_peer(p - 1))

    # Data -----------------------------------------------------------------------------------
    @property
    def batch_rows(self) -> range:
        return slices.even(self.cfg.batch, self.parts("batch"), self.part("batch"))

    @property
    def micro_rows(self) -> int:
        return micro_rows(self.cfg.batch, self.parts("batch"), self.cfg.microbatches)

    @property
    def positions(self) -> list[int]:
        return seq_positions(self.cfg, self.parts("seq"), self.part("seq"))

    # Tensor parallel shards ---------------------------------------------------------------------
    @property
    def q_heads(self) -> range:
        return slices.even(self.cfg.model.heads, self.parts("heads"), self.part("heads"))

    @property
    def kv_heads(self) -> range:
        m = self.cfg.model
        return slices.kv_heads_of(m.heads, m.kv_heads, self.q_heads)

    @property
    def ffn_cols(self) -> range:
        return slices.even(self.cfg.model.ffn, self.parts("ffn"), self.part("ffn"))

    @property
    def vocab_slice(self) -> VocabSlice:
        """This rank's rows of the embedding and lm_head (padded: planc/layout/vocab.py)."""
        vocab = self.cfg.model.vocab or 0
        return vocab_slice(vocab, self.parts("vocab"), self.part("vocab"))


def holders(cfg: RunConfig, dims: tuple[str, ...], stage: int | None = None) -> list[Layout]:
    """One rank of the last pipeline stage (or of `stage`) per part of `dims` (the others hold
    equal copies): the one with coordinate 0 on every axis that splits neither `dims` nor
    layers."""
    keep = {a for d in (*dims, "layers") for a in cfg.splits.get(d, ())}
    out = []
    for rank in range(cfg.world_size):
        lay = Layout(cfg, rank)
        at = lay.is_last_stage if stage is None else lay.stage == stage
        if at and all(c == 0 for a, c in lay.coords.items() if a not in keep):
            out.append(lay)
    return out


def output_tiles(cfg: RunConfig, stage: int | None = None) -> list[tuple[int, range, list[int]]]:
    """(rank, batch rows, seq positions) of one holder of every tile of the final output (or of
    the residual stream of pipeline stage `stage`)."""
    return [(lay.rank, lay.batch_rows, lay.positions)
            for lay in holders(cfg, ("batch", "seq"), stage)]


def token_holders(cfg: RunConfig) -> list[tuple[int, range]]:
    """(rank, batch rows) of one holder of every batch part's generated tokens (tensor,
    head_dim, sequence and replicated axes hold equal copies)."""
    return [(lay.rank, lay.batch_rows) for lay in holders(cfg, ("batch",))]
