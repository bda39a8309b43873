"""Compressed weight formats and the bytes they store (what compress.CompressedLinear holds).

For a weight [out, in] whose original element size is `elem` (2 for bf16/fp16, 4 for fp32);
`in` must be a multiple of 8 for the 2:4 formats (V211 proves it for plans):
- dense:     out*in*elem
- int8:      out*in (int8 values) + out*elem (one scale per output row, original dtype)
- 2:4:       out*in/2*elem (kept values) + out*in/8 (metadata: 2 bits per kept element,
             i.e. a 4-bit nibble per group of 4 inputs)
- int8+2:4:  out*in/2 (kept int8 values) + out*in/8 (metadata) + out*elem (scales)

The metadata term is what torch's CUDA 2:4 formats hold for 16-bit and int8 values: CUTLASS
keeps an int16 [out, in/16] (int32 [out, in/32] for int8) meta tensor beside packed [out, in/2];
cuSPARSELt (torch._cslt_compress) allocates one buffer of out*in*9/16 elements for 16-bit dtypes
(= in/2 values + in/8 bytes per row) and out*in*10/16 bytes for int8 (= in/2 + in/8).
tests/torch/test_compress.py checks these formulas against the tensors the runtime stores.
"""

from __future__ import annotations

from typing import Literal

Format = Literal["dense", "int8", "2:4", "int8+2:4"]
FORMATS: tuple[Format, ...] = ("dense", "int8", "2:4", "int8+2:4")


def _meta(values: int) -> int:
    """2:4 metadata: 2 bits per kept value, half the values kept: values / 8 bytes."""
    return values // 8


def sparse_meta_bytes(out_features: int, in_features: int) -> int:
    """Metadata bytes of a 2:4 weight: in/8 bytes per row."""
    if in_features % 8:
        raise ValueError(f"2:4 metadata needs in_features % 8 == 0, got {in_features}")
    return _meta(out_features * in_features)


def weight_bytes(out_features: int, in_features: int, elem: int, fmt: Format = "dense") -> int:
    """Bytes a [out, in] weight occupies in format `fmt` (see the module docstring). A width
    that is no multiple of 8 is still counted (in/8 rounded down), so that the memory table of
    a plan V211 refuses shows what it would need."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")
    n = out_features * in_features
    sparse, int8 = "2:4" in fmt, "int8" in fmt
    kept = n // 2 if sparse else n
    return (kept * (1 if int8 else elem) + (_meta(n) if sparse else 0)
            + (out_features * elem if int8 else 0))


def format_for(is_mlp: bool, int8: bool, mlp_2_4: bool) -> Format:
    """A plan's `compress` lines -> one linear's format: int8 on every linear, 2:4 on MLP ones."""
    sparse = is_mlp and mlp_2_4
    if int8:
        return "int8+2:4" if sparse else "int8"
    return "2:4" if sparse else "dense"
