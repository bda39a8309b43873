"""Which runtime core builds each block of a layer: the runtime side of the strategy registry.

An attention core maps the residual stream x [b, s, hidden] and the Rope tables of the local
positions to its reduced output; an MLP core maps x to its reduced output. Each core module
exposes `make_attention(ctx, reader, layer)` or `make_mlp(ctx, reader, layer)`; the strategy
records of planc/layout/strategies.py name the core a plan's strategies run on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from planc.backends.torch.runtime import headdim_block, layers, moe_block, seq_attention
from planc.layout.strategies import attention_core

if TYPE_CHECKING:
    from planc.backends.torch.runtime.dist import RankContext
    from planc.backends.torch.weights import ShardReader

Factory = Callable[["RankContext", "ShardReader", int], nn.Module]

ATTENTION: dict[str, Factory] = {
    "heads": layers.make_attention,
    "head_dim": headdim_block.make_attention,
    "ring": seq_attention.make_attention,
    "gather": seq_attention.make_attention,
}
MLP: dict[str, Factory] = {"dense": layers.make_mlp, "moe": moe_block.make_mlp}


def attention_kind(ctx: RankContext) -> str:
    return attention_core(ctx.cfg.splits, ctx.cfg.attention)


def make_attention(ctx: RankContext, reader: ShardReader, layer: int) -> nn.Module:
    return ATTENTION[attention_kind(ctx)](ctx, reader, layer)


def make_mlp(ctx: RankContext, reader: ShardReader, layer: int) -> nn.Module:
    kind = "moe" if ctx.cfg.model.arch == "mixtral" or "experts" in ctx.cfg.splits else "dense"
    return MLP[kind](ctx, reader, layer)


def make_layer(ctx: RankContext, reader: ShardReader, layer: int) -> layers.DecoderLayer:
    return layers.DecoderLayer(make_attention(ctx, reader, layer), make_mlp(ctx, reader, layer))
