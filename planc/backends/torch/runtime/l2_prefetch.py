"""Prefetch a weight's first bytes into the GPU's L2 cache while a small kernel runs (decode).

Why: in a decode step the GEMMs read their weights from HBM at close to its bandwidth, but
between them run small kernels (a norm, RoPE, SiLU x up) during which HBM is nearly idle,
and each GEMM starts with a ramp before its reads reach full rate. A bulk L2 prefetch of the
next GEMM's first bytes, issued on a side stream as the small kernel starts, uses that idle
time: the GEMM then finds those bytes in L2. Whether it pays is measured, not assumed
(benchmarks/decode_overlap_h200.py); the decode step uses it only where it measured faster.

`prefetch(t, nbytes)` issues `cp.async.bulk.prefetch.L2` (sm_90+) over the first nbytes of a
contiguous tensor: one instruction per PIECE bytes, no registers, no result; the kernel ends
as soon as the requests are issued. Nothing to do off CUDA or below sm_90 (`supported`).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # optional: the torch CUDA wheels bring triton; CPU machines may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

PIECE = 16384  # bytes per prefetch instruction (a multiple of 16, as the instruction needs)
LANES = 32  # instructions per program (one warp)


def supported(t: Tensor) -> bool:
    """Whether prefetch can run for t: a CUDA tensor on sm_90 or newer, triton importable."""
    return (triton is not None and t.is_cuda
            and torch.cuda.get_device_capability(t.device)[0] >= 9)


def _prefetch_body(BASE, n_pieces, PIECE_BYTES: tl.constexpr, LANES: tl.constexpr):
    """Program p prefetches pieces p * LANES .. (p + 1) * LANES - 1 of BASE (bytes)."""
    idx = tl.program_id(0) * LANES + tl.arange(0, LANES)
    ok = (idx < n_pieces).to(tl.int32)
    ptrs = BASE + idx.to(tl.int64) * PIECE_BYTES
    size = tl.full([LANES], PIECE_BYTES, tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $2, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $3; mov.u32 $0, 0; }",
        "=r,l,r,r", [ptrs, ok, size], dtype=tl.int32, is_pure=False, pack=1)


_KERNEL: list = []


def prefetch(t: Tensor, nbytes: int) -> None:
    """Bulk-prefetch the first min(nbytes, t's bytes) of t (contiguous) into L2; whole PIECEs
    only (the tail of less than a piece is left)."""
    if not supported(t) or nbytes <= 0:
        return
    assert t.is_contiguous()
    n_pieces = min(nbytes, t.numel() * t.element_size()) // PIECE
    if n_pieces == 0:
        return
    if not _KERNEL:
        _KERNEL.append(triton.jit(_prefetch_body))
    base = t.view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)
    _KERNEL[0][(triton.cdiv(n_pieces, LANES),)](base, n_pieces, PIECE_BYTES=PIECE,
                                                LANES=LANES, num_warps=1)
