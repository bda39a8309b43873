"""The indices of a split dimension that part i of n holds: even, zig-zag and RoPE-paired.

One definition serves three readers: concrete lists for the runtime and the renderer, and
symbolic ranges for the verifier, whose part index is a z3 term (the arithmetic below is
written so that it works on both; the verifier passes its own `ite` and `div`).

- even: contiguous chunks of ceil(size / n) (the last one short when n does not divide);
- zig-zag (sequence split with ring or gather attention): the sequence is cut into 2n chunks
  and part i holds chunks i and 2n-1-i, so causal attention work is balanced over the ring;
- RoPE-paired (head_dim split): Llama's RoPE (`rotate_half`) rotates dimension d with
  d + head_dim/2, so part i holds the range [i*w, (i+1)*w) of the first half and the same
  range shifted by head_dim/2, w = head_dim / (2n); the local slice is itself a valid
  `rotate_half` input.
Both two-piece slices need the size divisible by 2n: `pieces_per_part` says by how much.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Literal

SliceKind = Literal["even", "zigzag", "rope_paired"]
SEQ_ATTENTION = ("ring", "gather")  # attentions that lay the sequence out zig-zag


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def slice_kind(dim: str, attention: str = "local") -> SliceKind:
    """How `dim` is laid out over its parts (attention: the plan's sequence attention)."""
    if dim == "seq" and attention in SEQ_ATTENTION:
        return "zigzag"
    if dim == "head_dim":
        return "rope_paired"
    return "even"


def pieces_per_part(kind: SliceKind) -> int:
    """Contiguous pieces each part holds: the size must divide by parts x this."""
    return 1 if kind == "even" else 2


def zigzag_chunks(parts: int, i: Any) -> tuple[Any, Any]:
    """The two chunks (of 2 x parts) that part i holds: i and its mirror 2 x parts - 1 - i."""
    return i, 2 * parts - 1 - i


def pieces(kind: SliceKind, size: int, parts: int, i: Any) -> list[tuple[Any, Any, int]]:
    """The index ranges part i holds, as (lo, hi, cap): indices lo <= x < min(hi, cap)."""
    if kind == "zigzag":
        c = cdiv(size, 2 * parts)
        return [(k * c, (k + 1) * c, size) for k in zigzag_chunks(parts, i)]
    if kind == "rope_paired":
        half = size // 2
        w = cdiv(half, parts)
        return [(i * w, (i + 1) * w, half), (half + i * w, half + (i + 1) * w, size)]
    c = cdiv(size, parts)
    return [(i * c, (i + 1) * c, size)]


def _ite(cond: Any, a: Any, b: Any) -> Any:
    return a if cond else b


def owner(kind: SliceKind, size: int, parts: int, x: Any,
          ite: Callable[[Any, Any, Any], Any] = _ite,
          div: Callable[[Any, Any], Any] = operator.floordiv) -> Any:
    """The part that holds index x (the inverse of `pieces`)."""
    if kind == "zigzag":
        chunk = div(x, cdiv(size, 2 * parts))  # chunk c is part c's first or its mirror's second
        return ite(chunk < parts, chunk, zigzag_chunks(parts, chunk)[1])
    if kind == "rope_paired":
        half = size // 2
        w = cdiv(half, parts)
        return ite(x < half, div(x, w), div(x - half, w))
    return div(x, cdiv(size, parts))


def indices(kind: SliceKind, size: int, parts: int, i: int) -> list[int]:
    """The indices part i holds, in the order its local tensor stores them."""
    out: list[int] = []
    for lo, hi, cap in pieces(kind, size, parts, i):
        out += range(lo, min(hi, cap))
    return out


def even(size: int, parts: int, i: int) -> range:
    """Part i of an even split (size divisible by parts: the runtime's contiguous slices)."""
    step = size // parts
    return range(i * step, (i + 1) * step)


def kv_heads_of(heads: int, kv_heads: int, q_heads: range) -> range:
    """KV heads needed by the query heads `q_heads` (query head h reads kv head h // group).

    With kv_heads divisible by the head parts this is an even slice; with fewer kv heads than
    parts (parts % kv_heads == 0) each part holds the one kv head its query heads share.
    """
    group = heads // kv_heads
    return range(q_heads.start // group, (q_heads.stop - 1) // group + 1)
