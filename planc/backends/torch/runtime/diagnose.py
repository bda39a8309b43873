"""Where a prefill that differs from its reference first goes wrong: every layer's output.

Run only after rank 0 found the gathered output past the tolerance (reference_check): every rank
runs the pipeline once more with a forward hook on each of its decoder layers that keeps a copy
of the layer's output (the residual stream after it, microbatches concatenated), then, layer by
layer in order, the holders of that layer's stage send their tiles to rank 0
(pipeline.gather_output with the stage). Rank 0 compares them with Hugging Face's
output_hidden_states. Memory: one [rows, local seq, hidden] copy per local layer, on a run that
has already failed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from planc.backends.torch.runtime import pipeline
from planc.backends.torch.runtime.dist import RankContext
from planc.backends.torch.runtime.layers import Rope
from planc.backends.torch.runtime.model import StageModel


def layer_outputs(
    ctx: RankContext, model: StageModel, inputs: Tensor | None, rope: Rope
) -> list[Tensor | None]:
    """On rank 0, the output [batch, seq, hidden] of every layer of the model, in order (None
    elsewhere). Collective: every rank calls it."""
    kept: dict[int, list[Tensor]] = {i: [] for i in model.layer_ids}

    def keeper(layer: int) -> Any:
        def hook(module: Any, args: Any, out: Tensor) -> None:
            kept[layer].append(out.clone())  # the stream is updated in place by the next layer

        return hook

    handles = [layer.register_forward_hook(keeper(i))
               for i, layer in zip(model.layer_ids, model.layers)]  # fmt: skip
    try:
        with torch.inference_mode():
            pipeline.forward(ctx, model, inputs, rope)
    finally:
        for h in handles:
            h.remove()
    cfg, outs = ctx.cfg, []
    stages = ctx.layout.n_stages
    for layer in range(cfg.model.layers):
        stage = next(s for s in range(stages) if layer in ctx.layout.stage_layers(s))
        mine = torch.cat(kept[layer]) if layer in kept else None
        with torch.inference_mode():
            outs.append(pipeline.gather_output(ctx, mine, stage))
    return outs
