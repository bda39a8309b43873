"""The AST of a .plan file: frozen dataclasses, every node carries the Span it came from.

Values stay as written (numbers as exact Fractions with their unit string) so the resolver can
normalise units and report the original text; nothing here knows what a key means.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from planc.diagnostics import Span


@dataclass(frozen=True)
class Ident:
    name: str
    span: Span


@dataclass(frozen=True)
class Number:
    value: Fraction
    text: str
    span: Span


@dataclass(frozen=True)
class Quantity:
    number: Number
    unit: Ident | None
    span: Span


@dataclass(frozen=True)
class Hole:
    span: Span


@dataclass(frozen=True)
class NameValue:
    name: Ident
    span: Span


@dataclass(frozen=True)
class CountValue:
    """`H100 x 16`"""

    name: Ident
    count: Number
    span: Span


@dataclass(frozen=True)
class NamedQuantity:
    """`intra 450 GB/s`"""

    name: Ident
    quantity: Quantity
    span: Span


Value = Quantity | NameValue | CountValue | NamedQuantity | Hole


@dataclass(frozen=True)
class Prop:
    key: Ident
    value: Value
    span: Span


@dataclass(frozen=True)
class AxisSize:
    name: Ident
    size: Number | Hole
    span: Span


@dataclass(frozen=True)
class Mesh:
    axes: tuple[AxisSize, ...]
    span: Span


@dataclass(frozen=True)
class Microbatches:
    count: Number | Hole
    span: Span


@dataclass(frozen=True)
class FitCache:
    span: Span


@dataclass(frozen=True)
class AttentionMode:
    mode: Ident
    span: Span


@dataclass(frozen=True)
class StageRange:
    first: Number
    last: Number  # inclusive, as written: [0..3] is layers 0, 1, 2, 3
    span: Span


@dataclass(frozen=True)
class Stages:
    ranges: tuple[StageRange, ...]
    span: Span


ShardOption = Microbatches | FitCache | AttentionMode | Stages


@dataclass(frozen=True)
class Shard:
    dims: tuple[Ident, ...]
    axes: tuple[Ident, ...]
    options: tuple[ShardOption, ...]
    span: Span


@dataclass(frozen=True)
class Compress:
    words: tuple[Ident, ...]  # e.g. (weights, int8) or (mlp, sparse, 2:4)
    span: Span


@dataclass(frozen=True)
class Require:
    metric: Ident
    op: Literal["<=", ">=", "==", "<", ">"]
    quantity: Quantity
    span: Span


@dataclass(frozen=True)
class Objective:
    direction: Literal["minimize", "maximize"]
    target: Ident
    span: Span


@dataclass(frozen=True)
class Source:
    """`from hf "ckpt"`: the block's values come from a file (a checkpoint's config.json)."""

    kind: Ident  # hf
    path: str  # as written, without the quotes; resolved relative to the plan file
    path_span: Span
    span: Span


Statement = Prop | Mesh | Shard | Compress | Require | Objective
BlockKind = Literal["device", "cluster", "model", "workload", "plan"]


@dataclass(frozen=True)
class Block:
    kind: BlockKind
    name: Ident
    base: Ident | None
    body: tuple[Statement, ...]
    span: Span
    source: Source | None = None


@dataclass(frozen=True)
class PlanFile:
    path: str
    blocks: tuple[Block, ...]
