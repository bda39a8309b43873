"""`planc graph`: the placement graph as Graphviz DOT.

One node per device class (its ranks, layers, what it holds, peak memory), grouped in a cluster
per pipeline stage; collectives are edges: point-to-point stage hand-offs (send/recv) from one
class to the next, group collectives (all-reduce, all-to-all, ring passes) as loops on the
class whose devices take part. Every string is quoted and escaped, so names cannot break the
file. Render with `dot -Tsvg plan.dot -o plan.svg`.
"""

from __future__ import annotations

from planc.compiler.ir import PlacementGraph, ranks_of
from planc.compiler.spec import PlanSpec
from planc.compiler.units import human_bytes
from planc.render.tables import _ranks_text

COLLECTIVE_COLOUR = {"all_reduce": "#4e79a7", "all_gather": "#59a14f", "reduce_scatter": "#76b7b2",
                     "all_to_all": "#e15759", "ring_pass": "#b07aa1", "send_recv": "#333333"}


def quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as \\n."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "") \
        .replace("\n", "\\n") + '"'


def _attrs(**kv: str) -> str:
    return "[" + ", ".join(f"{k}={quote(v)}" for k, v in kv.items()) + "]"


def to_dot(plan: PlanSpec, graph: PlacementGraph) -> str:
    mesh = " x ".join(f"{a.name}={a.size}" for a in graph.mesh.axes)
    title = f"plan {plan.name}: {mesh} on {graph.mesh.size} x {plan.cluster.device.name}"
    out = [f"digraph {quote('plan ' + plan.name)} {{",
           f"  graph {_attrs(label=title, labelloc='t', rankdir='LR', fontname='Helvetica')};",
           "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];",
           "  edge [fontname=\"Helvetica\", fontsize=9];"]
    shards = [f"{', '.join(sh.dims)} over {', '.join(sh.axes)}" for sh in plan.shards
              if "layers" not in sh.dims]
    for st in graph.stages:
        c = graph.class_by_id(st.device_class)
        ranks = ranks_of(graph.mesh, c)
        peak, cap = c.memory["peak"], c.memory["capacity"]
        a, b = c.layers
        label = "\n".join([c.id, f"ranks {_ranks_text(ranks)} ({len(ranks)} devices)",
                           *shards,
                           (f"peak {human_bytes(peak)} of {human_bytes(cap)} "
                            f"({100 * peak / cap:.1f}%)")]
                          + ([(f"L2 resident {human_bytes(c.cache_resident)} of "
                               f"{human_bytes(graph.cache_capacity)}")] if c.cache_resident
                             else []))
        fill = "#f6d5d1" if peak > cap or c.cache_resident > graph.cache_capacity else "#dbe7f3"
        layers = f"layer {a}" if b - a == 1 else f"layers {a}-{b - 1}"
        out.append(f"  subgraph {quote('cluster_' + c.id)} {{")
        out.append(f"    graph {_attrs(label=f'stage {st.index}: {layers}', style='dashed')};")
        out.append(f"    {quote(c.id)} {_attrs(label=label, fillcolor=fill)};")
        out.append("  }")
    order = [st.device_class for st in graph.stages]
    for i, cid in enumerate(order):
        c = graph.class_by_id(cid)
        group = [x for x in c.collectives if not (x.op == "send_recv" and i + 1 < len(order))]
        if group:  # one loop per class, one line pair per collective: labels do not collide
            text = "\n".join(f"{x.op} over {' x '.join(x.axes)} ({x.group_size} ranks, {x.link}):"
                             f" {human_bytes(x.bytes)} x {x.calls:,} after {x.after}"
                             for x in group)
            colour = COLLECTIVE_COLOUR.get(group[0].op, "#333333")
            attrs = _attrs(label=text, color=colour, dir="both", tailport="n", headport="n")
            out.append(f"  {quote(cid)} -> {quote(cid)} {attrs};")
        for x in c.collectives:
            if x.op == "send_recv" and i + 1 < len(order):
                text = (f"{x.op} over {' x '.join(x.axes)} ({x.link})\n"
                        f"{human_bytes(x.bytes)} x {x.calls:,} per step")
                attrs = _attrs(label=text, color=COLLECTIVE_COLOUR["send_recv"], penwidth="2")
                out.append(f"  {quote(cid)} -> {quote(order[i + 1])} {attrs};")
    out.append("}")
    return "\n".join(out) + "\n"
