"""Programmatic dependent launch (PDL) for the static decode step's Triton kernels.

Why: a graph-replayed decode step is a chain of kernels, each of which waits for the whole of
the one before it: its launch, its programs' start and its first loads begin only when the
last program of the previous kernel has drained. On Hopper a kernel launched with PDL may
start while the kernel before it finishes: its programs run their prologue, then wait
(`gdc_wait`) until the previous kernel has completed and its writes are visible. The decode
step's GEMMs have a part that depends on nothing before them, their weights, so they may
also pull the first tiles of their weight into L2 before the wait (`prefetch_tiles`), while
the kernel before drains and HBM is otherwise idle.

Rules every kernel here keeps (checked by tests/torch/test_dependent_launch.py on the
interpreter path, where PDL is off, and by the step's token equality on the GPU):

- nothing is read that a kernel before it writes, and nothing is written, before `gdc_wait`;
  before it only weights (read-only for the whole run) are touched, by prefetches;
- `gdc_launch_dependents` comes after `gdc_wait`, so a kernel's dependents are launched only
  once its own wait has returned: at most two kernels of the chain are resident at once.

Waiting is transitive: a kernel's wait returns once the kernel before has completed, which
that kernel did only after its own wait returned; so every earlier kernel has completed too.
A kernel launched without PDL (cuBLAS's, inductor's) waits for the whole of the one before, as
usual, and a PDL kernel after one that never signals starts at its completion.

`PLANC_DECODE_PDL=0` turns PDL off and `PLANC_DECODE_PREFETCH=N` sets how many K tiles of its
weight each GEMM program prefetches (for measuring; benchmarks/results/h200_decode_issue15.md).
"""

from __future__ import annotations

import os

import torch

from planc.backends.torch.runtime.triton_mode import interpreting

try:  # optional: the torch CUDA wheels bring triton; CPU machines may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

DEFAULT_PREFETCH_TILES = 0  # K tiles of its weight a GEMM program pulls into L2 before its wait
L2_LINE_BYTES = 128  # one prefetch per line of the weight


def _gdc_available() -> bool:
    """Whether this triton has grid dependency control (triton >= 3.3: tl.extra.cuda.gdc_*)."""
    cuda = getattr(getattr(tl, "extra", None), "cuda", None)
    return cuda is not None and hasattr(cuda, "gdc_wait")


def enabled(device: torch.device) -> bool:
    """Whether the step's Triton kernels on `device` launch with PDL: a CUDA device of compute
    capability 9.0 or above (Hopper), not Triton's interpreter, not turned off."""
    if triton is None or device.type != "cuda" or interpreting():
        return False
    if os.environ.get("PLANC_DECODE_PDL", "1") == "0" or not _gdc_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def kernel_args(device: torch.device) -> dict[str, bool]:
    """A step kernel's PDL constexpr and launch option on `device`; none where PDL is off (the
    interpreter and older triton take no launch_pdl option; the kernels' PDL defaults to False)."""
    return {"PDL": True, "launch_pdl": True} if enabled(device) else {}


def gemm_args(weight: torch.Tensor) -> dict[str, int | bool]:
    """kernel_args for a GEMM kernel streaming `weight`, with the K tiles it prefetches and the
    prefetch's line steps (decode_gemm._gemm_body, decode_products._gate_up_silu_body)."""
    args: dict[str, int | bool] = dict(kernel_args(weight.device))
    if args:
        line_n, line_k = line_steps(weight)
        args.update(PREFETCH=prefetch_tiles(weight.device), LINE_N=line_n, LINE_K=line_k)
    return args


def prefetch_tiles(device: torch.device) -> int:
    """K tiles of its weight each GEMM program prefetches into L2 before its wait (0: none);
    only with PDL, since without it there is nothing to overlap the prefetch with."""
    if not enabled(device):
        return 0
    return int(os.environ.get("PLANC_DECODE_PREFETCH", DEFAULT_PREFETCH_TILES))


def line_steps(weight: torch.Tensor) -> tuple[int, int]:
    """(LINE_N, LINE_K): elements between the prefetched addresses along the weight's rows (N)
    and its inner dimension (K), one address per L2 line along the contiguous one."""
    line = max(1, L2_LINE_BYTES // weight.element_size())
    if weight.stride(-1) == 1:  # [N, K] with K contiguous
        return 1, line
    return line, 1  # in_major: N contiguous
