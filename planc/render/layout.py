"""What a picture of a plan shows, computed without matplotlib (so it is cheap and testable).

Columns are devices: one per rank, grouped by device class, or one per device class when the
mesh is too large to draw rank by rank. Rows are layers. Each column holds the layers its stage
runs, labelled with the slices of the model it holds (heads 8-15, experts 3, seq chunks 2+29 ...)
and keyed for colour by stage and shard. Beside that: the memory of each column against the
device's capacity and the plan's `require memory`, the L2 working set of fit-cache stages, and
one line per collective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from planc.compiler.ir import DeviceClass, PlacementGraph, ranks_of
from planc.compiler.spec import PlanSpec
from planc.compiler.splits import seq_slice_kind
from planc.compiler.units import human_bytes
from planc.layout import mesh as mesh_math
from planc.layout.slices import SliceKind, cdiv, pieces, slice_kind, zigzag_chunks

MAX_RANK_COLUMNS = 64  # beyond this, one column per device class
SHORT = {"heads": "heads", "kv_heads": "kv", "head_dim": "hd", "ffn": "ffn", "experts": "experts",
         "batch": "batch", "seq": "seq", "vocab": "vocab"}


@dataclass(frozen=True)
class Column:
    label: str  # "3" (a rank) or "ranks 0-4095" (a class)
    cls: DeviceClass
    ranks: tuple[int, ...]
    node: int  # node of the rank (-1: a column standing for a device class)
    stage: int
    shard: int  # index among the columns of its stage that hold different slices
    shards: int  # how many different slices the stage has
    hue: int  # colour family: the stage, or the first sharded axis' coordinate
    hues: int  # how many colour families the picture uses
    holds: tuple[str, ...]  # "heads 8-15", "ffn 4096-8191" ...


@dataclass(frozen=True)
class Picture:
    title: str
    subtitle: str
    columns: list[Column]
    layers: int
    stages: list[tuple[int, int, str]]  # [first, last) and class id
    capacity: int
    limit: int | None  # bytes of `require memory`, when the plan has one
    limit_text: str | None
    cache: int
    fit_cache: bool
    per_rank: bool
    nodes: int
    collectives: list[str] = field(default_factory=list)
    legend: list[str] = field(default_factory=list)


def _span_text(a: int, b: int) -> str:
    return f"{a}" if b - a <= 1 else f"{a}-{b - 1}"


def _chunk(dim: str, size: int, n: int, index: int, kind: SliceKind) -> str:
    """The indices of `dim` that shard `index` of `n` holds, as the coverage proof lays them."""
    if kind == "zigzag":
        a, b = zigzag_chunks(n, index)
        return f"seq chunks {a}+{b}"
    text = f"{SHORT[dim]} " + "+".join(_span_text(lo, min(hi, cap))
                                       for lo, hi, cap in pieces(kind, size, n, index))
    c = cdiv(size, n)
    pad = (index + 1) * c - max(size, index * c)
    if dim == "vocab" and pad > 0:  # padded to a multiple of the parts (compiler/vocab.py)
        text += f" + {pad} pad"
    return text


def _sizes(plan: PlanSpec) -> dict[str, int]:
    m, w = plan.model, plan.workload
    return {"heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim, "ffn": m.ffn,
            "experts": m.experts, "batch": w.batch or 0, "seq": w.seq or 0, "layers": m.layers,
            "vocab": m.vocab or 0}


def holds(plan: PlanSpec, coords: dict[str, int] | None) -> tuple[str, ...]:
    """What a device with these mesh coordinates holds of each split dimension (None: how much
    any one device holds, for a column that stands for a whole device class)."""
    out = []
    sizes = _sizes(plan)
    for sh in plan.shards:
        if "layers" in sh.dims:
            continue
        n = prod(plan.axis_size(a) for a in sh.axes)
        if coords is None:
            out += [f"{SHORT[d]} {cdiv(sizes[d], n)} each" for d in sh.dims
                    if n > 1 and not (d == "kv_heads" and "heads" in sh.dims)]
            continue
        index = mesh_math.part([(a, plan.axis_size(a)) for a, _ in plan.mesh], coords, sh.axes)
        for d in sh.dims:
            if d == "kv_heads" and "heads" in sh.dims:
                continue  # kv_heads follow heads
            if n > 1:
                kind = seq_slice_kind(plan) if d == "seq" else slice_kind(d)
                out.append(_chunk(d, sizes[d], n, index, kind))
    return tuple(out)


def _sharding_axes(plan: PlanSpec) -> list[str]:
    pp = set(plan.axes_of("layers"))
    used = {a for sh in plan.shards for a in sh.axes}
    return [a for a, s in plan.mesh if a in used and a not in pp and (s or 1) > 1]


def _columns(plan: PlanSpec, graph: PlacementGraph) -> tuple[list[Column], bool]:
    mesh = graph.mesh
    axes = _sharding_axes(plan)
    sizes = {a.name: a.size for a in mesh.axes}
    n_shards = prod(sizes[a] for a in axes) if axes else 1
    stage_of = {c.id: i for i, c in enumerate(graph.classes)}
    per_rank = mesh.size <= MAX_RANK_COLUMNS
    cols = []
    for c in graph.classes:
        ranks = ranks_of(mesh, c)
        si = stage_of[c.id]
        if not per_rank:
            label = f"ranks {_span_text(ranks[0], ranks[-1] + 1)}" \
                if ranks == list(range(ranks[0], ranks[-1] + 1)) else f"{len(ranks)} ranks"
            nodes = len({r // mesh.devices_per_node for r in ranks})
            label += f"\non {nodes} node{'s' if nodes != 1 else ''}"
            cols.append(Column(label, c, tuple(ranks), -1, si, 0, 1, si, len(graph.classes),
                               holds(plan, None)))
            continue
        for r in ranks:
            coords = mesh.coords(r)
            shard = mesh_math.part(mesh.shape, coords, axes)
            hue = si if len(graph.classes) > 1 else (coords[axes[0]] if axes else 0)
            hues = len(graph.classes) if len(graph.classes) > 1 else (
                sizes[axes[0]] if axes else 1)
            if len(graph.classes) == 1 and len(axes) > 1:
                within = prod(sizes[a] for a in axes[1:])
                shard, shards = shard % within, within
            elif len(graph.classes) == 1:
                shard, shards = 0, 1
            else:
                shards = n_shards
            cols.append(Column(str(r), c, (r,), r // mesh.devices_per_node, si, shard, shards,
                               hue, hues, holds(plan, coords)))
    return cols, per_rank


def _collective_lines(graph: PlacementGraph) -> list[str]:
    """One line per distinct collective; identical ones on several classes are said once."""
    seen: dict[tuple, list[str]] = {}
    for c in graph.classes:
        for co in c.collectives:
            key = (co.op, tuple(co.axes), co.group_size, co.bytes, co.calls, co.after, co.link)
            seen.setdefault(key, []).append(c.id)
    out = []
    for (op, axes, size, nbytes, calls, after, link), classes in seen.items():
        who = classes[0] if len(classes) == 1 else \
            (f"{classes[0]}..{classes[-1]}" if len(classes) > 2 else ", ".join(classes))
        out.append(f"{who}: {op} over {' x '.join(axes)} ({size} ranks, {link}-node) "
                   f"{human_bytes(nbytes)} x {calls:,} per step after {after} "
                   f"= {human_bytes(nbytes * calls)}")
    return out


def picture(plan: PlanSpec, graph: PlacementGraph, file: str = "") -> Picture:
    m, w, cl = plan.model, plan.workload, plan.cluster
    cols, per_rank = _columns(plan, graph)
    mesh_text = " x ".join(f"{a.name}={a.size}" for a in graph.mesh.axes)
    nodes = cdiv(graph.mesh.size, graph.mesh.devices_per_node)
    title = f"plan {plan.name}: {mesh_text} on {graph.mesh.size} x {cl.device.name}" + (
        f" ({nodes} nodes of {graph.mesh.devices_per_node})" if nodes > 1 else "")
    subtitle = (f"{file + ': ' if file else ''}model {m.name} ({m.arch}, {m.layers} layers, "
                f"hidden {m.hidden}, {m.dtype}), batch {w.batch}, seq {w.seq}"
                + (f", {graph.microbatches} microbatches" if graph.microbatches > 1 else ""))
    limit = limit_text = None
    for r in plan.requires:
        if r.metric == "memory":
            limit = (int(r.value * graph.device_capacity / 100) if r.unit == "percent"
                     else int(r.value))
            limit_text = f"require memory {r.op} {r.text}"
    fit = any(c.cache_resident for c in graph.classes)
    legend = []
    for sh in plan.shards:
        legend.append(f"{', '.join(sh.dims)} over {', '.join(sh.axes)}"
                      + (f" ({sh.attention} attention)" if "seq" in sh.dims else "")
                      + (" (fit cache)" if sh.fit_cache else ""))
    stages = [(s.layers[0], s.layers[1], s.device_class) for s in graph.stages]
    return Picture(title, subtitle, cols, m.layers, stages, graph.device_capacity, limit,
                   limit_text, graph.cache_capacity, fit, per_rank, nodes,
                   _collective_lines(graph), legend)
