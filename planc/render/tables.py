"""`planc show`: per-device tables of one plan, read straight from the placement graph.

Memory per device class against the HBM capacity and `require memory`, with a bar; the L2
working set of fit-cache stages against L2; the collectives each device class issues per step
with bytes and calls; the largest buffers. Consecutive device classes with identical numbers
share a row (a 128-stage pipeline prints three rows, not 128). No solver runs: these are the
numbers the verifier's obligations are built from.
"""

from __future__ import annotations

from planc.compiler import vocab
from planc.compiler.ir import DeviceClass, PlacementGraph, ranks_of
from planc.compiler.spec import PlanSpec, ShardSpec
from planc.compiler.units import human_bytes
from planc.cost.memory import MEMORY_COLUMNS, MEMORY_HEADER
from planc.layout.strategies import STRATEGIES

BAR = 20


def table(header: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()
          ) -> list[str]:
    """Aligned columns: text left, the numbered columns in `right` right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in [header, *rows]]


def shard_text(sh: ShardSpec) -> str:
    text = f"shard {', '.join(sh.dims)} over {', '.join(sh.axes)}"
    if "layers" in sh.dims:
        text += f" microbatches {sh.microbatches}" if (sh.microbatches or 1) > 1 else ""
        text += " fit cache" if sh.fit_cache else ""
        text += (" stages " + ", ".join(f"[{a}..{b}]" for a, b in sh.stages)) if sh.stages else ""
    if "seq" in sh.dims:
        text += f" attention {sh.attention}"
    return text


def _ranks_text(ranks: list[int]) -> str:
    if ranks == list(range(ranks[0], ranks[-1] + 1)):
        return str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
    shown = ",".join(map(str, ranks[:4]))
    return shown + (f",... ({len(ranks)})" if len(ranks) > 4 else "")


def _layers_text(c: DeviceClass) -> str:
    a, b = c.layers
    return "-" if b <= a else (str(a) if b - a == 1 else f"{a}-{b - 1}")


def groups(graph: PlacementGraph) -> list[list[DeviceClass]]:
    """Runs of consecutive device classes that differ only in which layers they run."""
    out: list[list[DeviceClass]] = []
    prev = None
    for c in graph.classes:
        key = (tuple(sorted(c.memory.items())), c.cache_resident, c.layers[1] - c.layers[0],
               tuple((x.op, tuple(x.axes), x.bytes, x.calls, x.after) for x in c.collectives))
        if out and key == prev:
            out[-1].append(c)
        else:
            out.append([c])
        prev = key
    return out


def _name(group: list[DeviceClass]) -> str:
    return group[0].id if len(group) == 1 else f"{group[0].id}..{group[-1].id}"


def _group_layers(g: list[DeviceClass]) -> str:
    if len(g) == 1:
        return _layers_text(g[0])
    return f"{g[0].layers[0]}-{g[-1].layers[1] - 1} ({g[0].layers[1] - g[0].layers[0]} each)"


MEMORY_TABLE = ["class", "ranks", "layers", *MEMORY_HEADER, "of HBM"]


def memory_rows(graph: PlacementGraph) -> list[list[str]]:
    """The memory table of `planc check` and `planc show` (MEMORY_TABLE's columns): one row
    per run of device classes that differ only in their layers; the terms add up to the peak."""
    rows = []
    for g in groups(graph):
        mem = g[0].memory
        ranks = sorted(r for x in g for r in ranks_of(graph.mesh, x))
        rows.append([_name(g), _ranks_text(ranks), _group_layers(g),
                     *(human_bytes(mem[k]) for k in MEMORY_COLUMNS),
                     f"{100 * mem['peak'] / mem['capacity']:.1f}%"])
    return rows


def _bar(used: int, capacity: int) -> str:
    filled = min(BAR, round(BAR * used / capacity)) if capacity else BAR
    return "[" + "#" * filled + "." * (BAR - filled) + "]" + (" OVER" if used > capacity else "")


def strategy_text(graph: PlacementGraph) -> str:
    """The graph's strategies by their registry names and axes: "pipeline over pp, tensor over
    tp"."""
    by_role = {s.role: s.name for s in STRATEGIES}
    axes = {r: [a.name for a in graph.mesh.axes if a.role == r] for r in graph.strategies}
    return ", ".join(f"{by_role.get(r, r)} over {', '.join(axes[r])}"
                     for r in graph.strategies) or "none"


def memory_limit(plan: PlanSpec, capacity: int) -> tuple[int, str] | None:
    for r in plan.requires:
        if r.metric == "memory":
            lim = int(r.value * capacity / 100) if r.unit == "percent" else int(r.value)
            return lim, f"require memory {r.op} {r.text} = {human_bytes(lim)}"
    return None


def show_text(plan: PlanSpec, graph: PlacementGraph, file: str = "") -> str:
    m, w, cl = plan.model, plan.workload, plan.cluster
    mesh = " x ".join(f"{a.name}={a.size}" for a in graph.mesh.axes)
    nodes = -(-graph.mesh.size // graph.mesh.devices_per_node)
    out = [f"plan {plan.name}" + (f" ({file})" if file else ""),
           f"  mesh {mesh} on {graph.mesh.size} x {cl.device.name}"
           + (f" ({nodes} nodes of {graph.mesh.devices_per_node})" if nodes > 1 else "")
           + f"; strategies: {strategy_text(graph)}"
           + (f"; {graph.microbatches} microbatches" if graph.microbatches > 1 else ""),
           f"  model {m.name}: {m.arch}, {m.layers} layers, hidden {m.hidden}, {m.heads} heads "
           f"({m.kv_heads} kv), head_dim {m.head_dim}, ffn {m.ffn}"
           + (f", {m.experts} experts (top {m.top_k})" if m.experts else "") + f", {m.dtype}",
           f"  workload {w.name}: batch {w.batch}, seq {w.seq}, {w.phase}"]
    out += ["  " + shard_text(sh) for sh in plan.shards]
    padding = vocab.padding_text(plan)
    if padding:
        out.append(f"  {padding}")
    cap = graph.device_capacity
    limit = memory_limit(plan, cap)
    groups_ = groups(graph)
    bound = min(cap, limit[0]) if limit else cap
    rows = [row + [_bar(g[0].memory["peak"], bound)]
            for row, g in zip(memory_rows(graph), groups_)]
    out += ["", f"memory per device (HBM {human_bytes(cap)}"
            + (f"; {limit[1]}" if limit else "") + ")"]
    out += table([*MEMORY_TABLE, "against the limit"], rows, frozenset(range(3, 10)))
    out += ["", f"L2 cache ({human_bytes(graph.cache_capacity)} per device)"]
    if any(c.cache_resident for c in graph.classes):
        rows = [[_name(g), _group_layers(g), human_bytes(g[0].cache_resident),
                 f"{100 * g[0].cache_resident / graph.cache_capacity:.0f}%",
                 "fits" if g[0].cache_resident <= graph.cache_capacity else "DOES NOT FIT"]
                for g in groups_]
        out += table(["class", "layers", "resident", "of L2", "fit"], rows, frozenset({2, 3}))
    else:
        out.append("  no `fit cache` stage: weights stream from HBM")
    out += ["", "collectives per step"]
    rows = []
    for g in groups_:
        for x in g[0].collectives:
            rows.append([_name(g), x.op, " x ".join(x.axes), str(x.group_size), x.link,
                         human_bytes(x.bytes), f"{x.calls:,}", human_bytes(x.bytes * x.calls),
                         x.after])
    if rows:
        out += table(["class", "op", "over", "ranks", "link", "per call", "calls", "per step",
                      "after"], rows, frozenset({3, 5, 6, 7}))
    else:
        out.append("  none: every device works alone")
    out += ["", "largest buffers"]
    for g in groups_:
        top = sorted(g[0].buffers, key=lambda b: (-b.bytes, b.name))[:3]
        out.append(f"  {_name(g)}: " + ", ".join(
            f"{b.name} {human_bytes(b.bytes)}{' per layer' if b.per_layer else ''}"
            for b in top))
    return "\n".join(out) + "\n"
