"""Who holds what: pure-Python index arithmetic of a RunConfig over its mesh (no torch).

A rank's coordinates are the row-major digits of its rank over the mesh axes (last axis fastest).
A model dimension split over several axes is cut into prod(sizes) equal parts and the part of a
rank is the row-major index of its coordinates on those axes, first axis outermost. Everything
the runtime slices (batch rows, sequence positions, heads, kv heads, ffn columns, stages) is
derived here, so it can be checked without starting processes and reused by the other runtime
modules (ring / head_dim attention, MoE) without re-deriving it.
"""

from __future__ import annotations

from dataclasses import dataclass

from planc.backends.torch.runtime.config import ROPE_PARAMETERS, RunConfig
from planc.backends.torch.runtime.decode_layout import decode_errors
from planc.backends.torch.runtime.vocab_layout import VocabSlice, vocab_slice

SPLIT_DIMS = ("batch", "seq", "layers", "heads", "kv_heads", "head_dim", "ffn", "experts",
              "vocab")


def axis_sizes(cfg: RunConfig) -> dict[str, int]:
    return dict(cfg.mesh)


def coords_of(cfg: RunConfig, rank: int) -> dict[str, int]:
    """Coordinates of `rank`: row-major over cfg.mesh, last axis fastest."""
    coords: dict[str, int] = {}
    for name, size in reversed(cfg.mesh):
        coords[name] = rank % size
        rank //= size
    return {name: coords[name] for name, _ in cfg.mesh}


def rank_of(cfg: RunConfig, coords: dict[str, int]) -> int:
    rank = 0
    for name, size in cfg.mesh:
        rank = rank * size + coords[name]
    return rank


def product(cfg: RunConfig, axes: tuple[str, ...]) -> int:
    sizes = axis_sizes(cfg)
    n = 1
    for a in axes:
        n *= sizes[a]
    return n


def index_on(cfg: RunConfig, coords: dict[str, int], axes: tuple[str, ...]) -> int:
    """Row-major index of `coords` restricted to `axes` (first axis outermost)."""
    sizes = axis_sizes(cfg)
    i = 0
    for a in axes:
        i = i * sizes[a] + coords[a]
    return i


def with_index(cfg: RunConfig, coords: dict[str, int], axes: tuple[str, ...], i: int) -> int:
    """The rank whose coordinates equal `coords` except on `axes`, where they spell index i."""
    sizes = axis_sizes(cfg)
    c = dict(coords)
    for a in reversed(axes):
        c[a] = i % sizes[a]
        i //= sizes[a]
    return rank_of(cfg, c)


def even_range(n: int, parts: int, i: int) -> range:
    step = n // parts
    return range(i * step, (i + 1) * step)


def seq_positions(cfg: RunConfig, parts: int, i: int) -> list[int]:
    """Global token positions held by sequence part i of `parts`.

    Contiguous chunks, except ring/gather attention with zigzag, where part i holds chunks i and
    2*parts-1-i of 2*parts so that causal work is balanced round the ring.
    """
    if parts == 1:
        return list(range(cfg.seq))
    if cfg.attention != "local" and cfg.zigzag:
        c = cfg.seq // (2 * parts)
        j = 2 * parts - 1 - i
        return list(range(i * c, (i + 1) * c)) + list(range(j * c, (j + 1) * c))
    return list(even_range(cfg.seq, parts, i))


def kv_head_range(heads: int, kv_heads: int, q_heads: range) -> range:
    """KV heads needed by the query heads `q_heads` (query head h reads kv head h // group).

    With kv_heads divisible by the tensor-parallel size this is an even slice; with fewer kv heads
    than ranks (tp % kv_heads == 0) each rank holds the one kv head its query heads share.
    """
    group = heads // kv_heads
    return range(q_heads.start // group, (q_heads.stop - 1) // group + 1)


@dataclass(frozen=True)
class Layout:
    """One rank's view of the plan: its coordinates and every slice it owns."""

    cfg: RunConfig
    rank: int

    @property
    def coords(self) -> dict[str, int]:
        return coords_of(self.cfg, self.rank)

    def axes(self, dim: str) -> tuple[str, ...]:
        return self.cfg.splits.get(dim, ())

    def parts(self, dim: str) -> int:
        return product(self.cfg, self.axes(dim))

    def part(self, dim: str) -> int:
        return index_on(self.cfg, self.coords, self.axes(dim))

    # Pipeline ------------------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return self.parts("layers")

    @property
    def stage(self) -> int:
        return self.part("layers")

    def stage_layers(self, stage: int | None = None) -> range:
        s = self.stage if stage is None else stage
        if not self.cfg.stages:
            return range(self.cfg.model.layers)
        first, last = self.cfg.stages[s]
        return range(first, last)

    @property
    def is_first_stage(self) -> bool:
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.n_stages - 1

    def stage_peer(self, delta: int) -> int:
        """Rank of the same tensor/data coordinates on stage `stage + delta`."""
        return with_index(self.cfg, self.coords, self.axes("layers"), self.stage + delta)

    # Data -----------------------------------------------------------------------------------
    @property
    def batch_rows(self) -> range:
        return even_range(self.cfg.batch, self.parts("batch"), self.part("batch"))

    @property
    def micro_rows(self) -> int:
        return len(self.batch_rows) // self.cfg.microbatches

    @property
    def positions(self) -> list[int]:
        return seq_positions(self.cfg, self.parts("seq"), self.part("seq"))

    # Tensor parallel shards ---------------------------------------------------------------------
    @property
    def q_heads(self) -> range:
        return even_range(self.cfg.model.heads, self.parts("heads"), self.part("heads"))

    @property
    def kv_heads(self) -> range:
        m = self.cfg.model
        return kv_head_range(m.heads, m.kv_heads, self.q_heads)

    @property
    def ffn_cols(self) -> range:
        return even_range(self.cfg.model.ffn, self.parts("ffn"), self.part("ffn"))

    @property
    def vocab_slice(self) -> VocabSlice:
        """This rank's rows of the embedding and lm_head (padded: vocab_layout)."""
        vocab = self.cfg.model.vocab or 0
        return vocab_slice(vocab, self.parts("vocab"), self.part("vocab"))


def output_tiles(cfg: RunConfig, stage: int | None = None) -> list[tuple[int, range, list[int]]]:
    """(rank, batch rows, seq positions) of one holder of every tile of the final output (or of
    the residual stream of pipeline stage `stage`).

    The last stage holds the output; ranks that differ only on tensor-parallel axes hold equal
    copies, so the holder of a tile is the one with coordinate 0 on every such axis.
    """
    data_axes = set(cfg.splits.get("batch", ())) | set(cfg.splits.get("seq", ()))
    stage_axes = cfg.splits.get("layers", ())
    tiles = []
    for rank in range(cfg.world_size):
        lay = Layout(cfg, rank)
        c = lay.coords
        if lay.stage != (lay.n_stages - 1 if stage is None else stage) or any(
            c[a] != 0 for a, _ in cfg.mesh if a not in data_axes and a not in stage_axes
        ):
            continue
        tiles.append((rank, lay.batch_rows, lay.positions))
    return tiles


def _rope_errors(kind: str, params: dict[str, object]) -> list[str]:
    if kind not in ROPE_PARAMETERS:
        return [(f"rope scaling {kind!r} is not implemented by the runtime (it implements "
                 f"{', '.join(ROPE_PARAMETERS)}): the run would compute another model")]
    missing = [k for k in ROPE_PARAMETERS[kind] if k not in params]
    return [f"rope scaling {kind!r} needs {', '.join(missing)}"] if missing else []


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
    if sp > 1 and cfg.attention != "local" and cfg.zigzag and cfg.seq % (2 * sp):
        errs.append(f"seq = {cfg.seq} is not divisible by the {2 * sp} zigzag chunks of {sp} parts")
    if m.heads % m.kv_heads:
        errs.append(f"heads = {m.heads} is not a multiple of kv_heads = {m.kv_heads}")
    errs += _rope_errors(m.features.rope_type, dict(m.features.rope_scaling))
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
    if hd > 1 and m.head_dim % (2 * hd):
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
    vocab_axes = set(s.get("vocab", ()))
    if vocab_axes and m.vocab is None:
        errs.append("splits['vocab'] needs a model vocab (this model is fed inputs_embeds)")
    shared = vocab_axes & (set(s.get("batch", ())) | set(s.get("seq", ())))
    if shared:
        errs.append(
            f"vocab over {sorted(shared)}, which also splits batch or seq: the ranks of a "
            "vocabulary group must hold the same tokens"
        )
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
