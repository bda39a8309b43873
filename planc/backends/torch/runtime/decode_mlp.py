"""The static decode step's gated MLP in fewer kernels: gate/up with SiLU x up in its epilogue.

Why: at a Llama-3-8B decode step cuBLAS runs the MLP as four kernels after its norm: the fused
gate/up GEMM, SiLU x up (an elementwise kernel), the down GEMM and, from 1 to 64 rows, the
split-K reduce kernel cuBLAS adds to it. Every kernel of a graph-replayed step costs a start
and a drain of a few microseconds beside its bytes (planc/cost/time.py, graph_op_overhead_s).
`gate_up_silu` makes silu(x @ W_gate^T) * (x @ W_up^T) in one Triton kernel: each program
computes the gate columns and the matching up columns of its tile and writes their product, so
the [rows, 2 ffn] gate/up output and the elementwise kernel are gone.

What it guarantees: the same rounding steps as the eager ops (layers.EAGER): the gate and up
products summed in float32 and rounded to the dtype (as cuBLAS's output), F.silu of the rounded
gate rounded, times the rounded up, rounded; only the GEMM's summation order differs.

The weight: the fused gate/up linear's [2 ffn, hidden] weight as layers.laid_out stores it
(either layout: the kernel takes its strides); gate rows [0, ffn), up rows [ffn, 2 ffn).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from planc.backends.torch.runtime.decode_kernels import interpreting

try:  # optional: the torch CUDA wheels bring triton; CPU machines may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

MIN_M = 16  # tl.dot needs >= 16 rows: x is padded up to this
MAX_M = 64  # more rows: the eager pair (gate/up GEMM, then SiLU x up)
INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}


def gate_up_silu_eager(x: Tensor, weight: Tensor) -> Tensor:
    """silu(gate) * up of F.linear(x, weight) = (gate | up): what the kernel computes."""
    gate, up = F.linear(x, weight).chunk(2, dim=-1)
    return F.silu(gate) * up


def _gate_up_silu_body(
    X, W, Y, M, FFN, K, sx_m, sw_n, sw_k, sy_m,
    M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
):
    """Program n: y[:, n block] = silu(x @ W[n block]^T) * (x @ W[ffn + n block]^T).

    DOT_F32: tl.dot on float32 operands with exact ("ieee") products, for fp32 inputs and under
    the interpreter (see decode_kernels._attn_partials_body)."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, M_PAD)
    n_ok = offs_n < FFN
    m_ok = offs_m < M
    cols = offs_n.to(tl.int64)
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


_BUILT: dict[bool, object] = {}


def _kernel() -> object:
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
                    DOT_F32=x.dtype == torch.float32 or interpreting(), **cfg)
    return y.reshape(*x.shape[:-1], ffn)


def config_for(rows: int) -> dict[str, int]:
    """The kernel's tile for `rows` rows (measured: benchmarks/decode_splitk_h200.py)."""
    if interpreting():
        return dict(INTERPRETER_CONFIG)
    return {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4}
