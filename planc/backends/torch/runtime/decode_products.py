"""The static decode step's GEMMs in fewer kernels than cuBLAS alone runs them.

Why: every kernel of a graph-replayed decode step costs a start and a drain of a few
microseconds beside its bytes (planc/cost/time.py, graph_op_overhead_s), and at a Llama-3-8B
decode step cuBLAS runs the gated MLP as four kernels after its norm (the fused gate/up GEMM,
SiLU x up as an elementwise kernel, the down GEMM and, at every batch measured, the split-K
reduce kernel it adds to the down GEMM; at 1 and 8 rows to o_proj too). Two changes, each
measured in a CUDA graph over a ring of weights larger than the L2 cache
(benchmarks/results/h200_decode_splitk_run18.json, h200_decode_mlp_run19.json):

- `gate_up_silu`: silu(x @ W_gate^T) * (x @ W_up^T) in one Triton kernel. Each program computes
  a tile of gate columns and the matching up columns and writes their product, so the
  [rows, 2 ffn] gate/up output and the elementwise kernel are gone: 59.1 against 66.4 us
  (cuBLAS + the compiled SiLU x up) at 64 rows, 57.8 against 60.6 at 8, 57.2 against 60.0 at 1.
- `split_product`: x @ W^T as S products over K / S each, with float32 partials [S, ..., N]
  that the residual add + norm after it sums (layers.Elementwise.add_parts_norm), so the
  split-K reduce kernel is gone. As torch.bmm of views (run 18): down_proj 32.4 against 35.0 us
  at 64 rows (S 2; the add + norm 3.1 against 2.7 us), 30.9 against 32.5 at 8 and 30.0 against
  32.5 at 1 (S 4); o_proj 10.75 against 13.1 at 8 rows and 10.7 against 13.4 at 1 (S 4), no
  gain at 64. As decode_gemm's Triton kernel writing the partials (`split_kernel`, run 23, the
  path on CUDA up to 64 rows): o_proj 9.9 us at 1 and 8 rows and 11.1 at 64 (S 2, against
  cuBLAS's 11.7), down_proj 29.2 / 29.6 / 32.3 at 1 / 8 / 64. The rule is
  planc/layout/schedule.static_step_product_parts (measured at 1, 8 and 64 rows; 9-16 and
  17-63 rows follow their neighbours, not measured).
- q/k/v at one row (schedule.static_step_qkv_split): split_kernel's float32 partials in 4,
  which the fused attention kernel sums as it reads them
  (decode_kernels.rope_flash_decode_triton), so no reduce kernel runs: the step 1.8% faster at one row in a one-process A/B, slower at 8 and
  64 rows (h200_decode_profile_run42_l4_qkv_split.json); the whole model at batch 1 4.10-4.11
  against 4.19 ms (h200_decode_run43_b1_*.json).

What they guarantee: the eager ops' rounding steps (layers.EAGER): products summed in float32
and rounded once to the dtype where the eager GEMM rounds its output (the partials' sum is
rounded by the add + norm before the add), F.silu of the rounded gate rounded, times the rounded
up, rounded; only the order of the float32 sums differs.

Weights: a plain linear's [out, in] weight as layers.laid_out stores it (either layout: the
kernel and the views take its strides); the fused gate/up weight's gate rows [0, ffn), up rows
[ffn, 2 ffn).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from planc.backends.torch.runtime import dependent_launch, layers
from planc.backends.torch.runtime.triton_mode import interpreting
from planc.layout.schedule import GATE_UP_SILU_MAX_ROWS, SPLIT_KERNEL_MAX_ROWS

try:  # optional: the torch CUDA wheels bring triton; CPU machines may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

MIN_M = 16  # tl.dot needs >= 16 rows: x is padded up to this
MAX_M = GATE_UP_SILU_MAX_ROWS  # more rows: the eager pair (gate/up GEMM, then SiLU x up)
INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}


def gate_up_silu_eager(x: Tensor, weight: Tensor) -> Tensor:
    """silu(gate) * up of F.linear(x, weight) = (gate | up): what the kernel computes, by the
    layer's own eager ops (in place on the GEMM's output: a view of its gate half)."""
    return layers.EAGER.silu_mul(F.linear(x, weight))


def _gate_up_silu_body(
    X, W, Y, M, FFN, K, sx_m, sw_n, sw_k, sy_m,
    M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Program n: y[:, n block] = silu(x @ W[n block]^T) * (x @ W[ffn + n block]^T).

    DOT_F32: tl.dot on float32 operands with exact ("ieee") products, for fp32 inputs and under
    the interpreter (see decode_kernels._attn_partials_body). PDL: as decode_gemm._gemm_body's."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, M_PAD)
    n_ok = offs_n < FFN
    m_ok = offs_m < M
    cols = offs_n.to(tl.int64)
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    acc_g = tl.zeros([M_PAD, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([M_PAD, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = tl.load(X + offs_m[:, None] * sx_m + offs_k[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_ptrs = W + cols[None, :] * sw_n + offs_k[:, None] * sw_k  # [BLOCK_K, BLOCK_N]
        w_ok = k_ok[:, None] & n_ok[None, :]
        wg = tl.load(w_ptrs, mask=w_ok, other=0.0)
        wu = tl.load(w_ptrs + FFN * sw_n, mask=w_ok, other=0.0)
        if DOT_F32:
            acc_g += tl.dot(x.to(tl.float32), wg.to(tl.float32), input_precision="ieee")
            acc_u += tl.dot(x.to(tl.float32), wu.to(tl.float32), input_precision="ieee")
        else:
            acc_g += tl.dot(x, wg)
            acc_u += tl.dot(x, wu)
    dt = Y.dtype.element_ty
    gate = acc_g.to(dt).to(tl.float32)
    up = acc_u.to(dt).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
    tl.store(Y + offs_m[:, None] * sy_m + offs_n[None, :], (silu * up).to(dt),
             mask=m_ok[:, None] & n_ok[None, :])


# triton.jit's JITFunction, launched as kernel[grid](...); triton is optional, so Any
Kernel = Any

_BUILT: dict[bool, Kernel] = {}


def _kernel() -> Kernel:
    """The jitted kernel, built on first use (triton.jit reads TRITON_INTERPRET when it wraps a
    function: building late lets a test run it in Triton's interpreter on CPU tensors)."""
    interpret = interpreting()
    if interpret not in _BUILT:
        _BUILT[interpret] = triton.jit(_gate_up_silu_body)
    return _BUILT[interpret]


def usable(x: Tensor, weight: Tensor) -> bool:
    """Whether gate_up_silu runs the kernel for these operands (else the eager pair)."""
    if triton is None or x.dtype != weight.dtype or weight.dim() != 2:
        return False
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    rows = x.numel() // max(x.shape[-1], 1)
    return (weight.shape[1] == x.shape[-1] and weight.shape[0] % 2 == 0
            and 1 <= rows <= MAX_M and (x.is_cuda or interpreting()))


def gate_up_silu(x: Tensor, weight: Tensor, config: dict[str, int] | None = None) -> Tensor:
    """silu(gate) * up for x [..., hidden] and the fused weight [2 ffn, hidden]: [..., ffn]
    (module docstring); the eager pair where the kernel does not apply (`usable`).

    config: {"BLOCK_N", "BLOCK_K", "num_warps", "num_stages"}, default `config_for(rows)`."""
    if not usable(x, weight):
        return gate_up_silu_eager(x, weight)
    ffn, k = weight.shape[0] // 2, weight.shape[1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, ffn, dtype=x.dtype, device=x.device)
    cfg = dict(config or config_for(m))
    grid = (triton.cdiv(ffn, cfg["BLOCK_N"]),)
    _kernel()[grid](x2, weight, y, m, ffn, k, x2.stride(0), weight.stride(0), weight.stride(1),
                    y.stride(0), M_PAD=max(MIN_M, triton.next_power_of_2(m)),
                    DOT_F32=x.dtype == torch.float32 or interpreting(),
                    **dependent_launch.kernel_args(weight.device), **cfg)
    return y.reshape(*x.shape[:-1], ffn)


def config_for(rows: int) -> dict[str, int]:
    """The kernel's tile: one for every row count, the fastest at 1 and 64 rows and within
    0.3 us of the fastest at 8 of the tiles timed (h200_decode_mlp_run19.json: BLOCK_N 32..128,
    BLOCK_K 64..256, 4 or 8 warps, 3..6 stages)."""
    del rows  # the same tile served 1, 8 and 64 rows
    if interpreting():
        return dict(INTERPRETER_CONFIG)
    return {"BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4}


# --------------------------------------------------------------------------------------------
# Split-K by the caller


def split_kernel_applies(cuda: bool, rows: int, parts: int) -> bool:
    """Whether split_product runs the Triton kernel by default: on the GPU path with triton,
    split, at most SPLIT_KERNEL_MAX_ROWS rows (decided on the host: a captured graph keeps it)."""
    return cuda and triton is not None and parts > 1 and rows <= SPLIT_KERNEL_MAX_ROWS


def split_runs_kernel(device: torch.device, rows: int, parts: int) -> bool:
    """split_kernel_applies on `device`, Triton's interpreter counting as a GPU (it runs the
    GPU path on CPU tensors): what split_product does and what the step's metrics report."""
    return split_kernel_applies(device.type == "cuda" or interpreting(), rows, parts)


def split_config(rows: int) -> dict[str, int]:
    """The Triton split's tile (h200_decode_splitk_run23.json, 8 tiles timed per shape: the
    fastest or within 0.2 us of it for o_proj and down_proj at 1, 8 and 64 rows)."""
    if interpreting():
        return dict(INTERPRETER_CONFIG)
    if rows <= 16:
        return {"BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4}
    return {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4}


def split_product(x: Tensor, weight: Tensor, parts: int, kernel: bool | None = None
                  ) -> Tensor:
    """The float32 partial products [parts, ..., N] of x [..., K] @ weight [N, K]^T over
    `parts` slices of K. Their sum is F.linear(x, weight) before its rounding to x's dtype.
    kernel (default: split_runs_kernel): decode_gemm's Triton kernel writes the partials, its
    tiles of K shared out among the parts (split_config); else views of x and weight in one
    batched GEMM (equal slices of K)."""
    n, k = weight.shape
    assert k % parts == 0 and x.shape[-1] == k
    x2 = x.reshape(-1, k)
    if kernel if kernel is not None else split_runs_kernel(x.device, x2.shape[0], parts):
        return split_kernel(x2, weight, parts).view(parts, *x.shape[:-1], n)
    xs = x2.view(x2.shape[0], parts, k // parts).transpose(0, 1)  # [parts, rows, K / parts]
    ws = weight.t().view(parts, k // parts, n)  # either layout: a view
    if x.dtype == torch.float32:
        out = torch.bmm(xs, ws)
    elif x.is_cuda:
        out = torch.bmm(xs, ws, out_dtype=torch.float32)
    else:  # no float32-output bmm off CUDA: exact products of the upcast operands
        out = torch.bmm(xs.float(), ws.float())
    return out.view(parts, *x.shape[:-1], n)


def split_kernel(x: Tensor, weight: Tensor, parts: int,
                 config: dict[str, int] | None = None) -> Tensor:
    """split_product's Triton path: x [M, K] (rows contiguous in K), weight [N, K] of either
    layout; decode_gemm's kernel with SPLIT_K = parts writes [parts, M, N] float32 and no
    reduce runs (the add + norm after sums them; one part is the float32 product). config:
    the tile, split_config's by default (the benchmark forces others). Why not the bmm: 9.9 against 10.6 us for
    o_proj at 1 and 8 rows, 29.2-29.6 against 29.8-30.9 for down_proj, and at 64 rows o_proj
    in 2 parts 11.1 against cuBLAS's 11.7, down_proj 32.3 against 32.8
    (h200_decode_splitk_run23.json)."""
    from planc.backends.torch.runtime import decode_gemm

    if x.stride(-1) != 1:  # the kernel reads x's rows contiguous in K
        x = x.contiguous()
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty(parts, m, n, device=x.device, dtype=torch.float32)
    cfg = config or split_config(m)
    decode_gemm._kernels()[0][(triton.cdiv(n, cfg["BLOCK_N"]), parts)](
        x, weight, out, out, m, n, k, x.stride(0), weight.stride(0), weight.stride(1), n,
        M_PAD=max(MIN_M, triton.next_power_of_2(m)), SPLIT_K=parts,
        DOT_F32=x.dtype == torch.float32 or interpreting(), GATED=False,
        **dependent_launch.kernel_args(weight.device), **cfg)
    return out

