"""One rank's view of a RunConfig's placement: its coordinates and every slice it owns.

The arithmetic is planc/layout's (mesh coordinates, even / zig-zag slices, stage ranges), the
same the compiler lowers and the verifier proves; this module only applies it to one rank.
"""

from __future__ import annotations

from dataclasses import dataclass

from planc.backends.torch.runtime.config import RunConfig
from planc.layout import mesh, slices
from planc.layout.headdim import headdim_split_ok
from planc.layout.stages import stage_layers

SPLIT_DIMS = ("batch", "seq", "layers", "heads", "kv_heads", "head_dim", "ffn", "experts")


def product(cfg: RunConfig, axes: tuple[str, ...]) -> int:
    return mesh.parts(cfg.mesh, axes)


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

    # Data -----------------------------------------------------------------------------------
    @property
    def batch_rows(self) -> range:
        return slices.even(self.cfg.batch, self.parts("batch"), self.part("batch"))

    @property
    def micro_rows(self) -> int:
        return len(self.batch_rows) // self.cfg.microbatches

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


def output_tiles(cfg: RunConfig) -> list[tuple[int, range, list[int]]]:
    """(rank, batch rows, seq positions) of one holder of every tile of the final output.

    The last stage holds the output; ranks that differ only on tensor-parallel axes hold equal
    copies, so the holder of a tile is the one with coordinate 0 on every such axis.
    """
    data_axes = set(cfg.splits.get("batch", ())) | set(cfg.splits.get("seq", ()))
    stage_axes = cfg.splits.get("layers", ())
    tiles = []
    for rank in range(cfg.world_size):
        lay = Layout(cfg, rank)
        c = lay.coords
        if not lay.is_last_stage or any(
            c[a] != 0 for a, _ in cfg.mesh if a not in data_axes and a not in stage_axes
        ):
            continue
        tiles.append((rank, lay.batch_rows, lay.positions))
    return tiles


def token_holders(cfg: RunConfig) -> list[tuple[int, range]]:
    """(rank, batch rows) of one holder of every batch part's generated tokens: the last stage's
    rank with coordinate 0 on every axis that splits neither batch nor layers (tensor, head_dim,
    sequence and replicated axes hold equal copies)."""
    keep = set(cfg.splits.get("batch", ())) | set(cfg.splits.get("layers", ()))
    out = []
    for rank in range(cfg.world_size):
        lay = Layout(cfg, rank)
        if lay.is_last_stage and all(c == 0 for a, c in lay.coords.items() if a not in keep):
            out.append((rank, lay.batch_rows))
    return out


def config_errors(cfg: RunConfig) -> list[str]:
    """Everything that would make this runtime slice wrongly, as messages with the numbers.

    The compiler's verifier proves these for plans; this re-check guards hand-written configs.
    """
    errs: list[str] = []
    m = cfg.model
    names = [a for a, _ in cfg.mesh]
    if len(set(names)) != len(names):
        errs.append(f"mesh axis names repeat: {names}")
    errs += [f"mesh axis {a!r} has size {s}; sizes must be >= 1" for a, s in cfg.mesh if s < 1]
    for dim, axes in sorted(cfg.splits.items()):
        if dim not in SPLIT_DIMS:
            errs.append(f"splits has unknown dimension {dim!r}; known: {', '.join(SPLIT_DIMS)}")
        unknown = [a for a in axes if a not in names]
        if unknown:
            errs.append(f"splits[{dim!r}] names axes {unknown} that are not in the mesh {names}")
        if len(set(axes)) != len(axes):
            errs.append(f"splits[{dim!r}] repeats an axis: {list(axes)}")
    if errs:
        return errs
    sizes = {
        "batch": cfg.batch,
        "seq": cfg.seq,
        "heads": m.heads,
        "ffn": m.ffn,
        "head_dim": m.head_dim,
        "experts": m.experts,
    }
    for dim, n in sizes.items():
        parts = product(cfg, cfg.splits.get(dim, ()))
        if n % parts:
            errs.append(f"{dim} = {n} is not divisible by the {parts} parts of splits[{dim!r}]")
    sp = product(cfg, cfg.splits.get("seq", ()))
    pieces = sp * slices.pieces_per_part(seq_kind(cfg))
    if sp > 1 and cfg.seq % pieces:
        errs.append(f"seq = {cfg.seq} is not divisible by the {pieces} chunks of {sp} parts")
    if m.heads % m.kv_heads:
        errs.append(f"heads = {m.heads} is not a multiple of kv_heads = {m.kv_heads}")
    tp = product(cfg, cfg.splits.get("heads", ()))
    kv_axes = cfg.splits.get("kv_heads")
    if kv_axes is not None and kv_axes != cfg.splits.get("heads", ()):
        errs.append(
            f"splits['kv_heads'] = {kv_axes} must equal splits['heads'] (query heads "
            "read the kv heads of their own group)"
        )
    if m.kv_heads % tp and tp % m.kv_heads:
        errs.append(
            f"kv_heads = {m.kv_heads} over {tp} head parts: need kv_heads divisible by "
            "the parts, or the parts divisible by kv_heads (kv heads replicated)"
        )
    errs += _strategy_errors(cfg, sp)
    pp_axes = cfg.splits.get("layers", ())
    for dim, axes in cfg.splits.items():
        if dim != "layers" and set(axes) & set(pp_axes):
            errs.append(f"axis {sorted(set(axes) & set(pp_axes))} splits both layers and {dim}")
    errs += _stage_errors(cfg, product(cfg, pp_axes))
    rows = cfg.batch // product(cfg, cfg.splits.get("batch", ()))
    if cfg.microbatches < 1 or rows % cfg.microbatches:
        errs.append(
            f"the {rows} local batch rows cannot be cut into {cfg.microbatches} "
            "microbatches of equal size"
        )
    if cfg.warmup < 0 or cfg.repeats < 1:
        errs.append(f"warmup = {cfg.warmup}, repeats = {cfg.repeats}: need >= 0 and >= 1")
    return errs + decode_errors(cfg)


def _strategy_errors(cfg: RunConfig, sp: int) -> list[str]:
    """What the sequence-parallel, head_dim, MoE and compressed blocks cannot run."""
    errs: list[str] = []
    m, s = cfg.model, cfg.splits
    if sp > 1 and cfg.attention == "local":
        errs.append(f"seq is split over {sp} parts: attention must be 'ring' or 'gather'")
    hd = product(cfg, s.get("head_dim", ()))
    if hd > 1 and sp > 1:
        errs.append("head_dim and seq are both split: no runtime block does both")
    if hd > 1 and not headdim_split_ok(m.head_dim, hd):
        errs.append(
            f"head_dim = {m.head_dim} over {hd} slices: needs head_dim divisible by 2 x {hd} "
            "so that every RoPE pair (i, i + head_dim/2) stays on one rank"
        )
    if m.arch == "mixtral":
        ex, ffn = set(s.get("experts", ())), set(s.get("ffn", ()))
        tokens = set(s.get("batch", ())) | set(s.get("seq", ()))
        if m.experts < 1:
            errs.append(f"arch mixtral needs experts >= 1, got {m.experts}")
        if ex & tokens and not ex <= tokens:
            errs.append(f"experts over {sorted(ex)}: all or none of them must split batch/seq")
        if ffn & (ex | tokens):
            errs.append(f"ffn over {sorted(ffn)} shares an axis with experts or batch/seq")
    elif s.get("experts"):
        errs.append("splits['experts'] needs arch mixtral")
    f_local = m.ffn // max(product(cfg, s.get("ffn", ())), 1)
    if cfg.compress_mlp_2_4 and f_local % 8:
        errs.append(
            f"2:4 sparsity on down projections of local width {f_local}: needs a multiple of 8"
        )
    return errs


def _stage_errors(cfg: RunConfig, n_stages: int) -> list[str]:
    layers = cfg.model.layers
    if n_stages == 1 and cfg.stages in ((), ((0, layers),)):
        return []
    if len(cfg.stages) != n_stages:
        msg = (
            f"{n_stages} pipeline stages on splits['layers'] but {len(cfg.stages)} "
            f"layer ranges in stages: {list(cfg.stages)}"
        )
        return [msg]
    errs = []
    expect = 0
    for i, (first, last) in enumerate(cfg.stages):
        if first != expect or last <= first:
            errs.append(
                f"stage {i} = [{first}, {last}) must start at layer {expect} and be "
                "non-empty (stages cover the layers in order)"
            )
        expect = last
    if expect != layers:
        errs.append(f"stages end at layer {expect}, the model has {layers} layers")
    return errs


def check_config(cfg: RunConfig) -> None:
    errs = config_errors(cfg)
    if errs:
        raise ValueError("RunConfig cannot run:\n  " + "\n  ".join(errs))


def decode_errors(cfg: RunConfig) -> list[str]:
    """What makes a decode RunConfig unrunnable (empty for prefill configs)."""
    if cfg.phase == "prefill":
        return []
    if cfg.phase != "decode":
        return [f"phase is 'prefill' or 'decode', not {cfg.phase!r}"]
    errs = []
    if cfg.model.vocab is None:
        errs.append("decode needs a vocabulary (model vocab): tokens are fed back as ids")
    if cfg.context < 1 or cfg.generate < 1:
        errs.append(
            f"decode needs context >= 1 and generate >= 1, got {cfg.context}, {cfg.generate}"
        )
    if cfg.seq != cfg.context:
        errs.append(
            f"decode runs the prompt as the prefill: seq ({cfg.seq}) must equal "
            f"context ({cfg.context})"
        )
    if not cfg.causal:
        errs.append("decode is causal: causal must be True")
    return errs
