"""Programmatic dependent launch (PDL) for the static decode step's Triton kernels.

Why: a graph-replayed decode step is a chain of kernels, each of which waits for the whole of
the one before it: its launch and its programs' start begin only when the last program of the
previous kernel has drained. On Hopper a kernel launched with PDL is launched once every
program of the kernel before has signalled (`gdc_launch_dependents`), and its programs wait
(`gdc_wait`) until that kernel has completed and its writes are visible; so its launch and
its programs' placement overlap the previous kernel's last programs.

Measured (Llama-3-8B shape, batch 64, one H200, the whole model): three gpu_bench runs each
way interleaved in one lease (a process each, benchmarks/results/h200_decode_run2[78]_*) gave
TPOT 8.234 ms with PDL against 8.412 without (medians), every run with it faster than every
run without; but one process's A/B in the next lease (four graphs captured off, on, off, on,
interleaved replays, h200_decode_profile_run29_l32_b64_pdl_ab.json) found them level (8.459 /
8.471 against 8.492 / 8.425 ms), so that 2.1% is not PDL's to claim. Kept on: no run measured
it slower. What did not pay (4-layer cut, run 26, h200_decode_profile_run26_l4_b64_pdl_variants.json):
the GEMM programs prefetching their first K tiles of weight into L2 before the wait, which
took bandwidth from the kernel still draining (1-2 tiles level, 4-16 tiles 0.7-2.2% slower).

Rules every kernel here keeps (tests/torch/test_dependent_launch.py reads their source):

- `gdc_wait` comes before anything is loaded or stored: nothing is read that a kernel before
  writes, and nothing is overwritten that a kernel before still reads;
- `gdc_launch_dependents` comes after `gdc_wait`, so a kernel's dependents are launched only
  once its own wait has returned: at most two kernels of the chain are resident at once.

Waiting is transitive: a kernel's wait returns once the kernel before has completed, which
that kernel did only after its own wait returned; so every earlier kernel has completed too.
A kernel launched without PDL (cuBLAS's, inductor's, NCCL's) waits for the whole of the one
before it, as usual, and a PDL kernel after one that never signals starts at its completion.
`PLANC_DECODE_PDL=0` turns it off (for measuring).
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


def _gdc_available() -> bool:
    """Whether this triton has grid dependency control (tl.extra.cuda.gdc_*, triton >= 3.3)."""
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
