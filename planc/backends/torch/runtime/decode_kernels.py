"""Placeholder of the decode attention kernels (the kernels branch replaces this file)."""

from __future__ import annotations

import torch
from torch import Tensor


def grouped_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, lengths: Tensor,
                      gap_lo: Tensor, gap_hi: int, scale: float, n_read: int) -> Tensor:
    b, heads, d = q.shape
    kv = k_cache.shape[1]
    k, v = k_cache[:, :, :n_read], v_cache[:, :, :n_read]
    qg = q.view(b, kv, heads // kv, d)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale
    j = torch.arange(n_read, device=q.device)
    seen = (j[None, :] < lengths[:, None]) & ~((j[None, :] >= gap_lo[:, None]) & (j < gap_hi))
    scores.masked_fill_(~seen[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    return torch.matmul(probs, v).view(b, heads, d)


KERNELS = {"grouped_bmm": grouped_attention}


def choose(device: torch.device, dtype: torch.dtype) -> str:
    return "grouped_bmm"
