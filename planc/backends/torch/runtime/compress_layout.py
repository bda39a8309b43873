"""Torch-free byte accounting of compressed weights (what compress.CompressedLinear stores).

For a weight [out, in] whose original element size is `dtype_bytes` (2 for bf16/fp16, 4 for
fp32); `in` must be a multiple of 8 for the 2:4 formats:
- none:      out*in*dtype_bytes
- int8:      out*in (int8 values) + out*dtype_bytes (one scale per output row, original dtype)
- 2:4:       out*in/2*dtype_bytes (kept values) + out*in/8 (metadata: 2 bits per kept element,
             i.e. a 4-bit nibble per group of 4 inputs)
- int8+2:4:  out*in/2 (kept int8 values) + out*in/8 (metadata) + out*dtype_bytes (scales)

The metadata term is what torch's CUDA 2:4 formats hold for 16-bit and int8 values: CUTLASS
keeps an int16 [out, in/16] (int32 [out, in/32] for int8) meta tensor beside packed [out, in/2];
cuSPARSELt (torch._cslt_compress) allocates one buffer of out*in*9/16 elements for 16-bit dtypes
(= in/2 values + in/8 bytes per row) and out*in*10/16 bytes for int8 (= in/2 + in/8).
This module must not import torch.
"""

from __future__ import annotations

from typing import Literal

Compression = Literal["none", "int8", "2:4", "int8+2:4"]


def sparse_meta_bytes(out_features: int, in_features: int) -> int:
    """Metadata bytes of a 2:4 weight: 2 bits per kept element, in/8 bytes per row."""
    if in_features % 8:
        raise ValueError(f"2:4 metadata needs in_features % 8 == 0, got {in_features}")
    return out_features * in_features // 8


def weight_bytes(
    out_features: int, in_features: int, dtype_bytes: int, compression: Compression = "none"
) -> int:
    """Bytes a [out, in] weight occupies under `compression` (see the module docstring)."""
    n = out_features * in_features
    if compression == "none":
        return n * dtype_bytes
    if compression == "int8":
        return n + out_features * dtype_bytes
    if compression == "2:4":
        return n // 2 * dtype_bytes + sparse_meta_bytes(out_features, in_features)
    if compression == "int8+2:4":
        return n // 2 + sparse_meta_bytes(out_features, in_features) + out_features * dtype_bytes
    raise ValueError(f"unknown compression {compression!r}")


def compression_for(is_mlp: bool, compress_int8: bool, compress_mlp_2_4: bool) -> Compression:
    """RunConfig's flags -> one linear's compression: int8 on every linear, 2:4 on MLP ones."""
    sparse = is_mlp and compress_mlp_2_4
    if compress_int8 and sparse:
        return "int8+2:4"
    if compress_int8:
        return "int8"
    return "2:4" if sparse else "none"
