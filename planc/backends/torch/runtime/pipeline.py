"""Pipeline-parallel forward over microbatches, and gathering the output onto rank 0.

Schedule (inference, GPipe order): every stage walks the microbatches in order. A stage posts
the receive of microbatch m+1 before computing m, so the transfer overlaps compute, and keeps at
most one send in flight, so a stage holds at most two outgoing activations. Tensor-parallel
peers each send their own (identical) copy to their peer on the next stage: no extra gather.
The last stage writes each microbatch's output into one preallocated [rows, seq, hidden] tensor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from planc.backends.torch.runtime.dist import RankContext
from planc.backends.torch.runtime.layers import Rope
from planc.backends.torch.runtime.layout import output_tiles
from planc.backends.torch.runtime.model import StageModel


def _irecv(t: Tensor, src: int) -> list[dist.Work]:
    return dist.batch_isend_irecv([dist.P2POp(dist.irecv, t, src)])


def _isend(t: Tensor, dst: int) -> list[dist.Work]:
    return dist.batch_isend_irecv([dist.P2POp(dist.isend, t, dst)])


def _wait(works: list[dist.Work]) -> None:
    for w in works:
        w.wait()


def forward(
    ctx: RankContext, model: StageModel, inputs: Tensor | None, rope: Rope
) -> Tensor | None:
    """Run this rank's stage on every microbatch. Returns the output on the last stage.

    inputs: this rank's rows (token ids or embeddings) on the first stage, else None.
    """
    lay, cfg = ctx.layout, ctx.cfg
    n_micro, rows = cfg.microbatches, lay.micro_rows
    shape = (rows, len(lay.positions), cfg.model.hidden)
    prev = None if lay.is_first_stage else lay.stage_peer(-1)
    nxt = None if lay.is_last_stage else lay.stage_peer(+1)

    def post_recv() -> tuple[Tensor, list[dist.Work]]:
        assert prev is not None
        buf = torch.empty(shape, device=ctx.device, dtype=ctx.dtype)
        return buf, _irecv(buf, prev)

    out = None
    if nxt is None and n_micro > 1:
        out = torch.empty((len(lay.batch_rows), *shape[1:]), device=ctx.device, dtype=ctx.dtype)
    pending = post_recv() if prev is not None else None
    in_flight: tuple[Tensor, list[dist.Work]] | None = None
    for m in range(n_micro):
        if pending is not None:
            x, works = pending
            _wait(works)
            pending = post_recv() if m + 1 < n_micro else None
        else:
            assert inputs is not None
            x = model.embed_inputs(inputs[m * rows : (m + 1) * rows])
        y = model(x, rope)  # every microbatch has the same positions: one rope table
        del x
        if nxt is not None:
            if in_flight is not None:
                _wait(in_flight[1])
            in_flight = (y, _isend(y, nxt))
        elif out is None:
            out = y
        else:
            out[m * rows : (m + 1) * rows].copy_(y)
        del y
    if in_flight is not None:
        _wait(in_flight[1])
    return out


def gather_output(ctx: RankContext, out: Tensor | None, stage: int | None = None
                  ) -> Tensor | None:
    """The full [batch, seq, hidden] output on rank 0 (None elsewhere), by point-to-point; with
    `stage`, what that stage's ranks pass as `out` (a layer's output, say)."""
    cfg = ctx.cfg
    tiles = output_tiles(cfg, stage)
    if ctx.rank != 0:
        if any(r == ctx.rank for r, _, _ in tiles):
            assert out is not None
            dist.send(out.contiguous(), dst=0)
        return None
    full = torch.empty((cfg.batch, cfg.seq, cfg.model.hidden), device=ctx.device, dtype=ctx.dtype)
    for rank, rows, positions in tiles:
        if rank == 0:
            assert out is not None
            tile = out
        else:
            tile = torch.empty(
                (len(rows), len(positions), cfg.model.hidden), device=ctx.device, dtype=ctx.dtype
            )
            dist.recv(tile, src=rank)
        idx = torch.tensor(positions, device=ctx.device)
        full[rows.start : rows.stop].index_copy_(1, idx, tile)
    return full
