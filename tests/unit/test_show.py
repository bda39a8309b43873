"""`planc show` (per-device tables, pictures) and `planc graph` (DOT): the numbers shown are the
placement graph's, the slices each device holds cover every dimension once, pictures are drawn
deterministically, and DOT stays well formed whatever the names."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from itertools import product
from pathlib import Path

import pytest

from planc.cli import main
from planc.compiler.ir import ranks_of
from planc.compiler.lower import lower
from planc.compiler.units import human_bytes
from planc.diagnostics import Diagnostics
from planc.pipeline import check_paths, find_plan
from planc.render.dot import to_dot
from planc.render.layout import holds, picture
from planc.render.tables import show_text
from planc.verifier.text import to_text
from tests.helpers import plan_text, resolve_text

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "specs" / "seeds"


def load(file: Path, name: str | None = None):  # type: ignore[no-untyped-def]
    plan, _ = find_plan(file, name, Diagnostics())
    assert plan is not None
    return plan, lower(plan)


BIG = plan_text("  mesh dp=32, pp=4, tp=8\n  shard batch over dp\n"
                "  shard layers over pp microbatches 4\n  shard heads, kv_heads, ffn over tp\n",
                cluster="cluster c {\n  device H100 x 1024\n  node 8\n}\n").replace(
                    "batch 128", "batch 1024")


# ---------------------------------------------------------------------------------------------
# Tables


def test_show_prints_the_graphs_memory_collectives_and_limit(capsys):
    plan, graph = load(SEEDS / "baseline.plan")
    assert main(["show", str(SEEDS / "baseline.plan")]) == 0
    out = capsys.readouterr().out
    assert out == show_text(plan, graph, str(SEEDS / "baseline.plan"))
    rows = {line.split()[0]: line for line in out.splitlines()
            if re.match(r"  stage\d ", line) and "%" in line}
    assert set(rows) == {"stage0", "stage1"}
    for c in graph.classes:
        ranks = ranks_of(graph.mesh, c)
        row = rows[c.id]
        assert f" {ranks[0]}-{ranks[-1]} " in row
        assert human_bytes(c.memory["peak"]) in row and human_bytes(c.memory["weights"]) in row
        assert f"{100 * c.memory['peak'] / 80e9:.1f}%" in row
    assert "require memory <= 90 % = 72 GB" in out  # 90% of the H100's 80 GB
    coll = [line for line in out.splitlines() if "all_reduce" in line or "send_recv" in line]
    expected = [x for c in graph.classes for x in c.collectives]
    assert len(coll) == len(expected)
    for line, x in zip(coll, expected):
        assert x.op in line and f" {x.calls:,} " in line and human_bytes(x.bytes) in line
        assert human_bytes(x.bytes * x.calls) in line


def test_show_marks_what_does_not_fit():
    plan, graph = load(SEEDS / "000_layerwise_cache.plan", "layerwise")
    out = show_text(plan, graph)
    assert out.count("DOES NOT FIT") == 3  # stage0, stage1..stage14, stage15
    assert "stage1..stage14" in out
    plan, graph = load(SEEDS / "001_head_x_headdim.plan", "head_x_headdim")
    assert "] OVER" in show_text(plan, graph)


def test_show_without_a_plan_name_in_a_file_of_two_plans_says_which(capsys):
    assert main(["show", str(SEEDS / "000_layerwise_cache.plan")]) == 1
    err = capsys.readouterr().err
    assert "E004" in err and "baseline, layerwise" in err


# ---------------------------------------------------------------------------------------------
# What each device holds


def _ranges(label: str) -> list[range]:
    """'heads 12-15' -> [range(12, 16)]; 'hd 16-31+80-95' -> two ranges."""
    _, spans = label.split(" ", 1)
    out = []
    for part in spans.split("+"):
        a, _, b = part.partition("-")
        out.append(range(int(a), int(b or a) + 1))
    return out


@pytest.mark.parametrize("file,name,dims,sizes", [
    ("baseline.plan", "baseline", ("heads",), (32,)),
    ("baseline.plan", "baseline", ("ffn",), (16384,)),
    ("001_head_x_headdim.plan", "head_x_headdim", ("heads", "hd"), (32, 128)),
    ("001_head_x_headdim.plan", "head_x_headdim", ("ffn",), (16384,)),
    ("004_expert_parallel.plan", "expert_parallel", ("experts",), (16,)),
    ("004_expert_parallel.plan", "expert_parallel", ("batch",), (128,)),
])
def test_the_slices_shown_cover_each_dimension_once_per_stage(file, name, dims, sizes):
    """Every (head, head_dim) pair, every ffn column ... is held by exactly one device."""
    plan, graph = load(SEEDS / file, name)
    for c in graph.classes:
        owned: dict[tuple[int, ...], int] = {}
        for r in ranks_of(graph.mesh, c):
            shown = holds(plan, graph.mesh.coords(r))
            per_dim = []
            for d in dims:
                [label] = [x for x in shown if x.startswith(d + " ")]
                per_dim.append([i for rg in _ranges(label) for i in rg])
            for key in product(*per_dim):
                owned[key] = owned.get(key, 0) + 1
        assert sorted(owned) == list(product(*(range(n) for n in sizes)))
        assert set(owned.values()) == {1}


def test_ring_chunks_are_zig_zag_and_tensor_parallel_heads_contiguous():
    plan, graph = load(SEEDS / "002_ring_attention.plan", "ring")
    assert holds(plan, graph.mesh.coords(3)) == ("seq chunks 3+28",)  # 2 x 16 chunks
    plan, graph = load(SEEDS / "baseline.plan")
    assert holds(plan, graph.mesh.coords(11)) == ("heads 12-15", "ffn 6144-8191")  # tp = 3


def test_a_large_mesh_is_drawn_one_column_per_device_class(tmp_path):
    f = tmp_path / "big.plan"
    f.write_text(BIG)
    plan, graph = load(f)
    pic = picture(plan, graph)
    assert not pic.per_rank and len(pic.columns) == 4
    assert pic.columns[0].holds == ("batch 32 each", "heads 4 each", "ffn 2048 each")
    assert all(len(c.ranks) == 256 for c in pic.columns)


# ---------------------------------------------------------------------------------------------
# Pictures


@pytest.mark.parametrize("file,name", [("baseline.plan", "baseline"),
                                       ("000_layerwise_cache.plan", "layerwise"),
                                       ("004_expert_parallel.plan", "expert_parallel")])
def test_show_draws_a_png_beside_the_tables(tmp_path, capsys, file, name):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    assert main(["show", str(SEEDS / file), "--plan", name, "--png", str(png)]) == 0
    assert f"plan {name}" in capsys.readouterr().out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_pictures_are_deterministic_svg_without_dates(tmp_path):
    pytest.importorskip("matplotlib")
    svg = tmp_path / "p.svg"
    args = ["show", str(SEEDS / "baseline.plan"), "--svg", str(svg)]
    assert main(args) == 0
    first = svg.read_bytes()
    assert ET.fromstring(first).tag.endswith("svg") and b"<dc:date>" not in first
    assert main(args) == 0
    assert svg.read_bytes() == first


def test_a_picture_of_a_large_mesh_draws(tmp_path):
    pytest.importorskip("matplotlib")
    from planc.render.picture import draw

    f = tmp_path / "big.plan"
    f.write_text(BIG)
    plan, graph = load(f)
    draw(picture(plan, graph), tmp_path / "big.png")
    assert (tmp_path / "big.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# DOT


_STMT = re.compile(r'^\s*(?:"(?P<a>(?:[^"\\]|\\.)*)"(?:\s*->\s*"(?P<b>(?:[^"\\]|\\.)*)")?'
                   r'\s*(?P<attrs>\[.*\])?;|subgraph "(?:[^"\\]|\\.)*" \{|\}|graph \[.*\];|'
                   r'node \[.*\];|edge \[.*\];|digraph "(?:[^"\\]|\\.)*" \{)$')


def parse_dot(text: str) -> tuple[set[str], list[tuple[str, str, str]]]:
    """Nodes and edges (with labels) of the DOT subset planc writes; fails on anything else."""
    nodes, edges = set(), []
    depth = 0
    for line in text.splitlines():
        m = _STMT.match(line)
        assert m, f"not DOT planc writes: {line!r}"
        depth += line.count("{") - line.count("}") if not m.group("a") else 0
        if m.group("a") is not None:
            label = re.search(r'label="((?:[^"\\]|\\.)*)"', m.group("attrs") or "")
            if m.group("b") is None:
                nodes.add(m.group("a"))
            else:
                edges.append((m.group("a"), m.group("b"), label.group(1) if label else ""))
    assert depth == 0
    return nodes, edges


def test_graph_has_a_node_per_class_and_collectives_as_edges(tmp_path, capsys):
    out = tmp_path / "g.dot"
    assert main(["graph", str(SEEDS / "baseline.plan"), "-o", str(out)]) == 0
    nodes, edges = parse_dot(out.read_text())
    assert nodes == {"stage0", "stage1"}
    assert all(a in nodes and b in nodes for a, b, _ in edges)
    hand_off = [e for e in edges if e[0] != e[1]]
    assert [(a, b) for a, b, _ in hand_off] == [("stage0", "stage1")]
    assert "send_recv over pp" in hand_off[0][2]
    loops = {a: label for a, b, label in edges if a == b}
    assert set(loops) == {"stage0", "stage1"}
    assert loops["stage0"].count("all_reduce over tp (8 ranks, intra)") == 2


def test_graph_escapes_names(tmp_path):
    plan, graph = load(SEEDS / "baseline.plan")
    evil = 'x" -> "y\\" [label="z'
    text = to_dot(replace(plan, name=evil), graph.model_copy(update={"plan": evil}))
    nodes, _ = parse_dot(text)
    assert nodes == {"stage0", "stage1"}
    assert text.splitlines()[0] == 'digraph "plan x\\" -> \\"y\\\\\\" [label=\\"z" {'
    if shutil.which("dot"):
        done = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr


def test_ring_chunks_are_contiguous_when_the_sequence_is_one_chunk_per_rank():
    text = plan_text("  mesh sp=16\n  shard seq over sp attention ring\n").replace(
        "seq   2048", "seq   16400")  # 16 x 1025: no zig-zag
    spec, _ = resolve_text(text)
    assert holds(spec.plans[0], {"sp": 3}) == ("seq 3075-4099",)


_SIZE = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def _memory_lines(text: str) -> list[list[str]]:
    """The cells of the memory table (its first 10 columns: show adds a bar, check L2)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s*class\s+ranks", line))
    out = []
    for line in lines[start:]:
        if not line.strip() or line.lstrip().startswith(("ok", "FAIL", "error", "L2", "??")):
            break
        out.append(re.split(r"\s{2,}", line.strip())[:10])
    return out


@pytest.mark.parametrize("name,plan_name", [
    ("baseline", "baseline"), ("001_head_x_headdim", "head_x_headdim"),
    ("004_expert_parallel", "expert_parallel"), ("000_layerwise_cache", "layerwise")])
def test_check_and_show_print_the_same_memory_rows_and_each_adds_up(name, plan_name):
    file = SEEDS / f"{name}.plan"
    checked = _memory_lines(to_text(check_paths([file], plan_name)))
    plan, graph = load(file, plan_name)
    shown = _memory_lines(show_text(plan, graph))
    assert checked == shown and "buffers" in checked[0]
    for row in checked[1:]:
        cells = [c.split() for c in row[3:9]]
        *terms, peak = [float(v.replace(",", "")) * _SIZE[u] for v, u in cells]
        assert len(terms) == 5 and abs(sum(terms) - peak) <= 0.01 * peak, row
    for c in graph.classes:
        assert c.memory["peak"] == sum(c.memory[k] for k in
                                       ("weights", "activations", "kv_cache", "buffers", "reserve"))


def test_show_names_each_strategy_from_the_registry_with_its_axes():
    plan, graph = load(SEEDS / "001_head_x_headdim.plan", "head_x_headdim")
    assert "strategies: head_dim over m, tensor over n" in show_text(plan, graph)
    plan, graph = load(SEEDS / "baseline.plan")
    assert "strategies: pipeline over pp, tensor over tp;" in show_text(plan, graph)
