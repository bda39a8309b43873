"""The resolved spec: names bound, units normalised to integers, presets filled in.

These frozen dataclasses are what the checks and the lowering read. Spans are kept beside the
values they justify (fields named `*_span`, excluded from equality) so every diagnostic can point
at the line that produced a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from planc.diagnostics import Span
from planc.models.features import DEFAULT_FEATURES, ModelFeatures

DIMS = ("batch", "seq", "layers", "heads", "kv_heads", "head_dim", "ffn", "experts", "vocab")
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
               "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    memory: int  # HBM bytes
    cache: int  # L2 bytes
    compute: int  # dense FLOP/s at the model dtype
    bandwidth: int  # HBM bytes/s
    reserve: int  # bytes the runtime holds outside torch's allocator
    workspace: int = 0  # bytes libraries take through torch's allocator (cuBLAS workspace)
    autotune: int = 0  # bytes an autotuner takes through it while it times tiles (presets.py)
    # W: the datasheet board power (TDP), what the device can draw at most; None: not known.
    # Only the power and energy claims use it (cost/claims.power_bounds).
    power: int | None = None
    # Measured by `planc calibrate` on the device itself; None: not calibrated. Estimates use
    # them; the sound bounds keep the datasheet compute and bandwidth above.
    gemm: int | None = None  # FLOP/s of a large GEMM at the model dtype
    attention: int | None = None  # FLOP/s of causal SDPA (causal FLOPs counted as half)
    hbm: int | None = None  # B/s of a device copy (bytes read + written)
    allreduce: int | None = None  # B/s of all-reduce bus bandwidth between the node's devices
    latency: Fraction | None = None  # seconds of one small collective
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    device: DeviceSpec
    count: int
    per_node: int
    intra: int  # bytes/s per direction within a node
    inter: int  # bytes/s per device across nodes
    span: Span | None = field(default=None, compare=False, repr=False)
    count_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: Literal["llama", "mixtral"]
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    dtype: str
    vocab: int | None = None
    experts: int = 0
    top_k: int = 0
    features: ModelFeatures = DEFAULT_FEATURES  # family data: rope, norm eps, biases, tying
    # The positions the model was trained for (HF max_position_embeddings): a longer workload
    # is a warning. Not a feature: it changes no number the program computes.
    max_positions: int | None = None
    span: Span | None = field(default=None, compare=False, repr=False)
    spans: dict[str, Span] = field(default_factory=dict, compare=False, repr=False)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    batch: int | None  # None: a hole for the verifier to fill
    seq: int | None
    phase: Literal["prefill", "decode"] = "prefill"
    context: int = 0
    generate: int = 0
    span: Span | None = field(default=None, compare=False, repr=False)
    spans: dict[str, Span] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ShardSpec:
    dims: tuple[str, ...]
    axes: tuple[str, ...]
    microbatches: int | None = 1  # None: a hole
    fit_cache: bool = False
    attention: Literal["local", "ring", "gather"] = "local"
    stages: tuple[tuple[int, int], ...] = ()  # inclusive ranges as written
    span: Span | None = field(default=None, compare=False, repr=False)
    dim_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    axis_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    microbatches_span: Span | None = field(default=None, compare=False, repr=False)
    stages_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RequireSpec:
    metric: str
    op: Literal["<=", ">=", "==", "<", ">"]
    value: Fraction  # normalised: bytes, seconds, tokens/s, FLOP/s or a plain count
    unit: str  # the dimension of value, e.g. "bytes", "percent", "count"
    text: str  # as written, for messages
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PlanSpec:
    name: str
    file: str
    model: ModelSpec
    cluster: ClusterSpec
    workload: WorkloadSpec
    mesh: tuple[tuple[str, int | None], ...]  # None: a hole
    shards: tuple[ShardSpec, ...]
    compress_int8: bool = False
    compress_mlp_2_4: bool = False
    requires: tuple[RequireSpec, ...] = ()
    objective: tuple[str, str] | None = None  # ("minimize", "time")
    span: Span | None = field(default=None, compare=False, repr=False)
    mesh_span: Span | None = field(default=None, compare=False, repr=False)
    axis_spans: dict[str, Span] = field(default_factory=dict, compare=False, repr=False)
    compress_span: Span | None = field(default=None, compare=False, repr=False)

    @property
    def has_holes(self) -> bool:
        return (
            any(s is None for _, s in self.mesh)
            or any(sh.microbatches is None for sh in self.shards)
            or self.workload.batch is None
            or self.workload.seq is None
        )

    def axis_size(self, axis: str) -> int:
        for a, s in self.mesh:
            if a == axis:
                assert s is not None, "holes are filled before lowering"
                return s
        raise KeyError(axis)

    def axes_of(self, dim: str) -> tuple[str, ...]:
        for sh in self.shards:
            if dim in sh.dims:
                return sh.axes
        return ()

    def shard_of(self, dim: str) -> ShardSpec | None:
        for sh in self.shards:
            if dim in sh.dims:
                return sh
        return None

    def degree(self, dim: str) -> int:
        n = 1
        for a in self.axes_of(dim):
            n *= self.axis_size(a)
        return n

    @property
    def devices(self) -> int:
        n = 1
        for _, s in self.mesh:
            assert s is not None
            n *= s
        return n


@dataclass(frozen=True)
class SpecFile:
    path: str
    plans: tuple[PlanSpec, ...]
    models: dict[str, ModelSpec] = field(default_factory=dict)
    clusters: dict[str, ClusterSpec] = field(default_factory=dict)
    workloads: dict[str, WorkloadSpec] = field(default_factory=dict)
    devices: dict[str, DeviceSpec] = field(default_factory=dict)
    # Other files read on the way (a `from hf` config.json): path -> text, so a diagnostic
    # located in one shows its line.
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
