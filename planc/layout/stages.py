"""Pipeline stages: which contiguous layer range [first, last) each stage runs."""

from __future__ import annotations


def even_stages(layers: int, n: int) -> list[tuple[int, int]]:
    """n contiguous [first, last) ranges, sizes differing by at most one, larger ones first."""
    base, extra = divmod(layers, n)
    out, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size))
        start += size
    return out


def stage_layers(stages: list[tuple[int, int]] | tuple[tuple[int, int], ...], layers: int,
                 stage: int) -> range:
    """The layers stage `stage` runs (every layer when the plan has no pipeline)."""
    if not stages:
        return range(layers)
    first, last = stages[stage]
    return range(first, last)
