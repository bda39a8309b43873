"""Draw a plan with matplotlib: devices across, layers down, memory bars under each device.

Cells are coloured by what a device holds: one colour family per pipeline stage (or, without a
pipeline, per coordinate of the first sharded axis), lighter or darker per tensor / expert /
sequence shard, and labelled with the slices held. Under the grid: stacked memory bars against
the HBM capacity line (and the `require memory` line), the L2 working set of fit-cache stages
against the L2 line, then the collectives per step. matplotlib is imported only here, with the
Agg backend, and output is deterministic (no dates in SVG or PNG metadata).
"""

from __future__ import annotations

import colorsys
from pathlib import Path

from planc.compiler.units import human_bytes
from planc.render.layout import Column, Picture

PARTS = (("weights", "#3b5b92"), ("activations", "#e8a33d"), ("kv_cache", "#8c6bb1"),
         ("buffers", "#6bb1a0"), ("reserve", "#b0b0b0"))
FAMILIES = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
            "#ff9da7", "#9c755f", "#bab0ac")
OVER = "#c0392b"


def _mix(rgb: tuple[float, float, float], white: float) -> tuple[float, float, float]:
    r, g, b = rgb
    return (r + (1 - r) * white, g + (1 - g) * white, b + (1 - b) * white)


def family(hue: int, hues: int) -> tuple[float, float, float]:
    """A distinct colour per family: a fixed palette up to 10, evenly spaced hues beyond."""
    if hues <= len(FAMILIES):
        h = FAMILIES[hue % len(FAMILIES)]
        return (int(h[1:3], 16) / 255, int(h[3:5], 16) / 255, int(h[5:7], 16) / 255)
    return colorsys.hsv_to_rgb((hue % hues) / hues, 0.55, 0.88)


def cell_colour(c: Column) -> tuple[float, float, float]:
    base = family(c.hue, c.hues)
    if c.shards <= 1:
        return _mix(base, 0.25)
    return _mix(base, 0.05 + 0.6 * c.shard / (c.shards - 1))


def _ink(rgb: tuple[float, float, float]) -> str:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "black" if lum > 0.55 else "white"


def _gb(n: float) -> float:
    return n / 1e9


def _spans(cols: list[Column], key) -> list[tuple[int, int, object]]:  # type: ignore[no-untyped-def]
    """Runs of consecutive columns with the same key: (first, last + 1, key)."""
    out: list[tuple[int, int, object]] = []
    for i, c in enumerate(cols):
        k = key(c)
        if out and out[-1][2] == k:
            out[-1] = (out[-1][0], i + 1, k)
        else:
            out.append((i, i + 1, k))
    return out


def draw(pic: Picture, path: str | Path, dpi: int = 120) -> None:
    """Write the picture as PNG or SVG (by the file's extension)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "planc"  # stable element ids: same plan, same bytes
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    cols = pic.columns
    n = len(cols)
    col_w = 0.8 if pic.per_rank else 1.6
    width = max(9.0, n * col_w + 3.2)
    grid_h = min(7.0, max(2.6, 0.3 * pic.layers))
    text_h = 0.16 * (len(pic.collectives) + 4)
    heights = [grid_h, 2.2] + ([1.3] if pic.fit_cache else []) + [text_h]
    total = sum(heights) + 1.6  # room above the grid for the titles, classes and ranks
    fig = plt.figure(figsize=(width, total))
    gs = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.3,
                          left=1.3 / width, right=1 - 1.6 / width, top=1 - 1.45 / total,
                          bottom=0.1 / total)
    fig.text(1.3 / width, 1 - 0.3 / total, pic.title, fontsize=12, fontweight="bold", va="top")
    fig.text(1.3 / width, 1 - 0.62 / total, pic.subtitle, fontsize=8.5, color="#444444",
             va="top")

    # --- the grid: devices across, layers down -----------------------------------------------
    ax = fig.add_subplot(gs[0])
    ax.set_xlim(0, n)
    ax.set_ylim(pic.layers, 0)
    longest = max((len(x) for c in cols for x in c.holds), default=1)
    font = max(4.5, min(7.5, col_w * 72 * 0.9 / (0.6 * longest)))
    for i, c in enumerate(cols):
        lo, hi = c.cls.layers
        ax.add_patch(Rectangle((i, 0), 1, pic.layers, facecolor="#f3f3f3", edgecolor="none"))
        if hi <= lo:
            continue
        rgb = cell_colour(c)
        ax.add_patch(Rectangle((i + 0.04, lo + 0.04), 0.92, hi - lo - 0.08, facecolor=rgb,
                               edgecolor="white", linewidth=0.8))
        lines = list(c.holds) if pic.per_rank else [f"{len(c.ranks)} devices, each:", *c.holds]
        room = max(1, int((hi - lo) * grid_h / pic.layers / (font / 72 * 1.35)))
        if len(lines) > room:
            lines = lines[:room]
        if lines:
            ax.text(i + 0.5, (lo + hi) / 2, "\n".join(lines), ha="center", va="center",
                    fontsize=font, color=_ink(rgb), linespacing=1.15)
        if c.cls.cache_resident:
            fits = c.cls.cache_resident <= pic.cache
            ax.text(i + 0.92, lo + 0.1, "L2 ok" if fits else "L2 ✗", ha="right", va="top",
                    fontsize=font * 0.85, fontweight="bold",
                    color="#1e7b34" if fits else OVER,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.85,
                          "edgecolor": "none"})
    many = len(pic.stages) > 8
    for first, _, _ in pic.stages[1:]:  # stage boundaries across the whole mesh
        ax.axhline(first, color="#999999" if many else "#333333", linewidth=0.6 if many else 0.9,
                   linestyle=(0, (4, 3)))
    if len(pic.stages) > 1 and len(pic.stages) <= 32:
        for si, (first, last, cid) in enumerate(pic.stages):
            where = f"layer {first}" if last - first == 1 else f"layers {first}-{last - 1}"
            ax.text(n + 0.15, (first + last) / 2, f"{cid}: {where}", va="center", ha="left",
                    fontsize=7 if len(pic.stages) > 8 else 7.5, clip_on=False)
    node_runs = _spans(cols, lambda c: c.node) if pic.per_rank else []
    for first, _, _ in node_runs[1:]:
        ax.axvline(first, color="black", linewidth=1.6)
    ticks = list(range(0, pic.layers, max(1, pic.layers // 16)))
    ax.set_yticks([t + 0.5 for t in ticks], [str(t) for t in ticks], fontsize=7.5)
    ax.set_ylabel("layer")
    ax.set_xticks([i + 0.5 for i in range(n)], [c.label for c in cols],
                  fontsize=7.5 if pic.per_rank else 7)
    ax.tick_params(axis="x", length=0, labeltop=True, labelbottom=False, pad=2)
    ax.annotate("rank" if pic.per_rank else "ranks", xy=(0, 1), xycoords="axes fraction",
                xytext=(-8, 2), textcoords="offset points", ha="right", va="bottom",
                fontsize=7.5, color="#555555")
    for first, last, class_id in _spans(cols, lambda c: c.cls.id):
        label = str(class_id)
        if pic.per_rank:
            label += f" (ranks {cols[first].label}-{cols[last - 1].label})" if last - first > 1 \
                else f" (rank {cols[first].label})"
        if (last - first) * col_w < len(label) * 0.075:
            label = str(class_id)
        ax.annotate(label, xy=((first + last) / 2, 1), xycoords=("data", "axes fraction"),
                    xytext=(0, 15 if pic.per_rank else 26), textcoords="offset points",
                    ha="center", va="bottom",
                    fontsize=7.5, annotation_clip=False, fontweight="bold")
        if first > 0:
            ax.annotate("", xy=(first, 1), xycoords=("data", "axes fraction"), xytext=(first, 1),
                        annotation_clip=False)
    if pic.nodes > 1 and pic.per_rank:
        for first, last, node in node_runs:
            ax.annotate(f"node {node}", xy=((first + last) / 2, pic.layers), xytext=(0, -4),
                        textcoords="offset points", ha="center", va="top", fontsize=7.5,
                        color="#555555", annotation_clip=False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)

    # --- memory per device against capacity --------------------------------------------------
    mx = fig.add_subplot(gs[1])
    peaks = [c.cls.memory["peak"] for c in cols]
    ymax = _gb(max([pic.capacity, *peaks, pic.limit or 0])) * 1.18
    for i, c in enumerate(cols):
        bottom = 0.0
        for part, colour in PARTS:
            v = _gb(c.cls.memory.get(part, 0))
            if v:
                mx.bar(i + 0.5, v, bottom=bottom, width=0.72, color=colour, linewidth=0)
                bottom += v
        over = c.cls.memory["peak"] > min(pic.capacity, pic.limit or pic.capacity)
        pct = 100 * c.cls.memory["peak"] / pic.capacity
        mx.text(i + 0.5, bottom + ymax * 0.02, f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%",
                ha="center", va="bottom", fontsize=6.5, color=OVER if over else "#333333",
                fontweight="bold" if over else "normal")
    mx.axhline(_gb(pic.capacity), color=OVER, linewidth=1.2)
    mx.text(n + 0.1, _gb(pic.capacity), f"HBM {human_bytes(pic.capacity)}", va="center",
            fontsize=7, color=OVER, clip_on=False)
    if pic.limit is not None and pic.limit != pic.capacity:
        mx.axhline(_gb(pic.limit), color="#d35400", linewidth=1, linestyle="--")
        mx.text(n + 0.1, _gb(pic.limit), pic.limit_text or "", va="center", fontsize=6.5,
                color="#d35400", clip_on=False)
    for first, _, _ in node_runs[1:]:
        mx.axvline(first, color="black", linewidth=1.6)
    mx.set_xlim(0, n)
    mx.set_ylim(0, ymax)
    mx.set_xticks([])
    mx.set_ylabel("memory (GB)")
    mx.text(1, 1.1, "above each bar: % of HBM, red when over HBM or `require memory`",
            transform=mx.transAxes, ha="right", va="bottom", fontsize=6.5, color="#555555")
    mx.spines[["top", "right"]].set_visible(False)
    used = [p for p in PARTS if any(c.cls.memory.get(p[0], 0) for c in cols)]
    mx.legend(handles=[Patch(color=col, label=name) for name, col in used], fontsize=6.5,
              loc="upper left", ncol=len(used), frameon=False, bbox_to_anchor=(0, 1.16))

    row = 2
    if pic.fit_cache:  # --- L2 working set of fit-cache stages ------------------------------
        cx = fig.add_subplot(gs[row])
        row += 1
        res = [c.cls.cache_resident for c in cols]
        unit, scale = ("GB", 1e9) if max([pic.cache, *res]) >= 2e9 else ("MB", 1e6)
        for i, r in enumerate(res):
            cx.bar(i + 0.5, r / scale, width=0.72, color=OVER if r > pic.cache else "#1e7b34")
            cx.text(i + 0.5, r / scale, human_bytes(r), ha="center", va="bottom", fontsize=6.5)
        cx.axhline(pic.cache / scale, color="black", linewidth=1.1)
        cx.text(n + 0.1, pic.cache / scale, f"L2 {human_bytes(pic.cache)}", va="center",
                fontsize=7, clip_on=False)
        cx.set_xlim(0, n)
        cx.set_ylim(0, max([pic.cache, *res]) / scale * 1.25)
        cx.set_xticks([])
        cx.set_ylabel(f"L2 resident\n({unit})", fontsize=8)
        cx.spines[["top", "right"]].set_visible(False)

    # --- collectives and sharding, as text ---------------------------------------------------
    tx = fig.add_subplot(gs[row])
    tx.axis("off")
    lines = ["sharding: " + "; ".join(pic.legend) if pic.legend else "sharding: none"]
    if pic.fit_cache:
        lines.append(f"fit cache: each stage's weights and residual stream stay in L2 "
                     f"({human_bytes(pic.cache)}); L2 ✗ marks a stage whose working set does "
                     "not fit")
    lines += ["collectives per step:"] + ["  " + x for x in pic.collectives] if pic.collectives \
        else ["collectives: none"]
    tx.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=7.5, family="monospace",
            transform=tx.transAxes)

    path = Path(path)
    meta = {"Software": None} if path.suffix.lower() == ".png" else {"Date": None}
    fig.savefig(path, dpi=dpi, metadata=meta)
    plt.close(fig)
