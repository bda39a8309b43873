"""Deterministic model inputs: the same on every rank and in the reference, whatever the split.

Row b of the batch is drawn from its own generator seeded by (cfg.seed, b), so a rank creates
only the rows it holds and still gets exactly the values of the full batch. Token ids when the
model has a vocabulary, else inputs_embeds [rows, seq, hidden] ~ N(0, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from planc.backends.torch.runtime.config import RunConfig


def _row(cfg: RunConfig, b: int) -> Tensor:
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + b)
    m = cfg.model
    if m.vocab is not None:
        return torch.randint(0, m.vocab, (cfg.seq,), generator=g)
    return torch.randn(cfg.seq, m.hidden, generator=g)


def make_inputs(
    cfg: RunConfig,
    rows: range,
    positions: list[int] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Rows `rows` of the batch at sequence `positions` (all when None), on `device`."""
    x = torch.stack([_row(cfg, b) for b in rows])
    if positions is not None and positions != list(range(cfg.seq)):
        x = x[:, torch.tensor(positions)]
    if cfg.model.vocab is None:
        x = x.to(dtype)
    return x.to(device).contiguous()
