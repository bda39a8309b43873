"""Rank <-> mesh coordinates, and the part of a split dimension a rank holds.

A mesh is its axes in order, `(name, size)`; the last axis varies fastest (rank = row-major
index of the coordinates). A dimension split over several axes is cut into prod(sizes) parts;
the part of a rank is the row-major index of its coordinates on those axes, first axis outermost.
"""

from __future__ import annotations

from collections.abc import Sequence

Axes = Sequence[tuple[str, int]]


def size(mesh: Axes) -> int:
    n = 1
    for _, s in mesh:
        n *= s
    return n


def coords(mesh: Axes, rank: int) -> dict[str, int]:
    """Coordinates of `rank`, in mesh axis order."""
    out: dict[str, int] = {}
    for name, s in reversed(list(mesh)):
        out[name] = rank % s
        rank //= s
    return {name: out[name] for name, _ in mesh}


def rank(mesh: Axes, coord: dict[str, int]) -> int:
    r = 0
    for name, s in mesh:
        r = r * s + coord[name]
    return r


def parts(mesh: Axes, axes: Sequence[str]) -> int:
    """How many parts a dimension split over `axes` has: the product of their sizes."""
    sizes = dict(mesh)
    n = 1
    for a in axes:
        n *= sizes[a]
    return n


def part(mesh: Axes, coord: dict[str, int], axes: Sequence[str]) -> int:
    """Row-major index of `coord` restricted to `axes` (first axis outermost)."""
    sizes = dict(mesh)
    i = 0
    for a in axes:
        i = i * sizes[a] + coord[a]
    return i


def with_part(mesh: Axes, coord: dict[str, int], axes: Sequence[str], i: int) -> int:
    """The rank whose coordinates equal `coord` except on `axes`, where they spell part i."""
    sizes = dict(mesh)
    c = dict(coord)
    for a in reversed(list(axes)):
        c[a] = i % sizes[a]
        i //= sizes[a]
    return rank(mesh, c)


def group(mesh: Axes, of_rank: int, axes: Sequence[str]) -> list[int]:
    """The ranks that share `of_rank`'s coordinates off `axes`, in part order along `axes`."""
    c = coords(mesh, of_rank)
    return [with_part(mesh, c, axes, i) for i in range(parts(mesh, axes))]


def groups(mesh: Axes, axes: Sequence[str]) -> list[list[int]]:
    """Every group over `axes` (a partition of the ranks), ordered by their first rank."""
    seen: set[int] = set()
    out = []
    for r in range(size(mesh)):
        if r not in seen:
            g = group(mesh, r, axes)
            seen.update(g)
            out.append(g)
    return out
