"""The placement graph: what every device holds, allocates, computes and communicates.

Frozen pydantic models with `extra="forbid"`; JSON-serialisable and deterministic (lists in a
fixed order, no sets). The graph is symbolic over the mesh: devices that do identical work form
one `DeviceClass`, described by the mesh coordinates it fixes, so a 16,384-GPU plan is as small
as a 16-GPU one; `ranks_of` expands a class to ranks on demand.

Per-layer items (shards, buffers, ops, collectives) are listed once per device class with a
`per_layer` count: the layers of a stage are identical, so a 128-layer stage costs one entry.
Source spans are not stored here (see `source_map`), so IR equality ignores positions.
"""

from __future__ import annotations

from itertools import product
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from planc.layout import mesh as mesh_math


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Axis(_Node):
    name: str
    size: int
    role: str  # what the axis carries: "tp", "pp", "dp", "sp", "ep", "hd", "idle" ...


class Mesh(_Node):
    axes: list[Axis]
    devices_per_node: int

    @property
    def shape(self) -> list[tuple[str, int]]:
        return [(a.name, a.size) for a in self.axes]

    @property
    def size(self) -> int:
        return mesh_math.size(self.shape)

    def rank(self, coords: dict[str, int]) -> int:
        return mesh_math.rank(self.shape, coords)

    def coords(self, rank: int) -> dict[str, int]:
        return mesh_math.coords(self.shape, rank)


class TensorShard(_Node):
    kind: Literal["tensor"] = "tensor"
    name: str  # Hugging Face name, `{i}` standing for the layer index
    global_shape: list[int]
    local_shape: list[int]
    split: dict[str, list[str]]  # tensor dim index (as str) -> mesh axes it is split over
    format: Literal["dense", "int8", "2:4", "int8+2:4"]
    dtype: str
    bytes: int  # per device, per layer instance (after compression, with scales / metadata)
    per_layer: bool  # repeated for every layer of the class's stage
    # The global shape after zero padding to a multiple of the split (a vocabulary split over
    # tp that does not divide: local_shape x parts = padded_shape); None: no padding.
    padded_shape: list[int] | None = None

    @model_serializer(mode="wrap")
    def _omit_no_padding(self, handler):  # type: ignore[no-untyped-def]
        # Unpadded shards (all but a vocabulary that does not divide) serialise as before.
        data = handler(self)
        if isinstance(data, dict) and data.get("padded_shape") is None:
            data.pop("padded_shape", None)
        return data


class Buffer(_Node):
    kind: Literal["buffer"] = "buffer"
    name: str
    role: Literal["activation", "kv_cache", "communication", "workspace", "io"]
    bytes: int
    live: tuple[int, int]  # first and last op index (inclusive) in the class's op list
    per_layer: bool


class Collective(_Node):
    kind: Literal["collective"] = "collective"
    op: Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv",
                "ring_pass"]
    axes: list[str]  # the mesh axes of the group
    group_size: int
    bytes: int  # per device per call (the payload each device contributes)
    calls: int  # per forward step (layers x microbatches x ring steps folded in)
    after: str  # the op it follows
    link: Literal["intra", "inter"]


class Op(_Node):
    kind: Literal["op"] = "op"
    name: str
    flops: int  # per call
    bytes: int  # HBM bytes read + written per call
    calls: int  # per forward step


class DeviceClass(_Node):
    id: str
    fixed: dict[str, int]  # mesh axis -> coordinate; axes not listed range over all values
    count: int
    layers: tuple[int, int]  # [first, last) of the stage this class runs
    shards: list[TensorShard]
    ops: list[Op]
    buffers: list[Buffer]
    collectives: list[Collective]
    memory: dict[str, int]  # weights, activations, kv_cache, buffers, reserve, peak, capacity
    cache_resident: int = 0  # bytes a fit-cache stage keeps resident in L2 (0: not fit-cache)


Node = Annotated[TensorShard | Buffer | Collective | Op, Field(discriminator="kind")]


class Stage(_Node):
    index: int
    layers: tuple[int, int]
    device_class: str


class PlacementGraph(_Node):
    format_version: Literal["1"] = "1"
    plan: str
    model: str
    mesh: Mesh
    batch: int
    seq: int
    microbatches: int
    strategies: list[str]  # e.g. ["tp", "pp"]: what the runtime will do
    # The placement itself: model dimension -> the mesh axes it is split over (several axes:
    # their product, first axis outermost; planc/layout/mesh.py). kv_heads follow heads.
    splits: dict[str, list[str]] = {}
    attention: Literal["local", "ring", "gather"] = "local"  # how a seq split attends
    # a seq split's layout: zig-zag (2 chunks per part, balanced causal work) or contiguous
    zigzag: bool = False
    stages: list[Stage]
    classes: list[DeviceClass]
    device_capacity: int
    cache_capacity: int
    phase: Literal["prefill", "decode"] = "prefill"
    context: int = 0  # decode: prompt tokens per sequence
    generate: int = 0  # decode: tokens generated per sequence

    def class_by_id(self, cid: str) -> DeviceClass:
        return next(c for c in self.classes if c.id == cid)


def ranks_of(mesh: Mesh, cls: DeviceClass) -> list[int]:
    """Every rank in a device class, in increasing order."""
    ranges = [[cls.fixed[a.name]] if a.name in cls.fixed else range(a.size) for a in mesh.axes]
    return sorted(mesh.rank(dict(zip([a.name for a in mesh.axes], c))) for c in product(*ranges))
