"""Whether triton.jit builds compiled or interpreter kernels now: one answer for every module
whose kernels are built lazily (decode_kernels, decode_gemm, decode_products) and for the
launches that exist only on a GPU (dependent_launch)."""

from __future__ import annotations

import os

try:  # optional: the torch CUDA wheels bring triton; CPU machines may lack it
    import triton
except ImportError:  # pragma: no cover - depends on the environment
    triton = None


def interpreting() -> bool:
    """Whether triton.jit would build interpreter kernels now (TRITON_INTERPRET)."""
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
