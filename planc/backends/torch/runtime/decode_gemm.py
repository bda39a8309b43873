"""A weight-streaming Triton GEMM for decode's skinny products y = x @ W^T (F.linear, no bias).

Why it exists: in a decode step x has few rows (the batch: 1..64) and W is a large weight, so a
GEMM is a read of W at HBM bandwidth. On an H200 cuBLAS reads the Llama-3-8B weights at batch 64
at 2.9-3.8 TB/s (a device copy reaches 4.18 TB/s). This kernel is a candidate to close that gap,
timed against cuBLAS by benchmarks/decode_gemm_h200.py (benchmarks/results/
h200_decode_gemm_run6.json). There it beat cuBLAS on every wide weight (N >= 3 K: the MLP's
gate/up, the lm_head, the seed shape's q/k/v) at every batch measured (1, 8, 64), by 1.3-9.5%;
on the others the faster of the two depends on the batch (down_proj: this kernel at 64,
cuBLAS at 8 by 16%; o_proj: cuBLAS at 64 by 43%, 12.3 against 17.6 us). So `linear`, inside
`streaming(True)` (the static decode step on a GPU), times both on the first product of each
shape (triton's do_bench, L2 flushed before each launch, as the weights of a decode step are
read from HBM) and runs the faster from then on (`choices()` says which, for the run's
metrics); off the GPU it is F.linear. `gated_linear` does the same for the MLP's down
projection of silu(gate) * up, where the kernel can make silu(gate) * up in its loads of the
fused gate/up output and save the elementwise kernel between the two GEMMs.

What it measured inside the decode step's CUDA graph, though (benchmarks/results/
h200_decode_profile_run9_b64_{stream,cublas}.json, Llama-3-8B cut to 4 layers, batch 64): the
picks (this kernel for gate/up, the gated down and the lm_head) took 883 us of GEMM kernels per
replayed step against cuBLAS's 771 us, though each was faster in isolation. So the static step runs cuBLAS
and uses this module only with PLANC_DECODE_GEMM=timed (runtime/decode_step.py): kept to
measure with, not as the default, until a kernel is faster where it runs. (What did pay inside
the graph is decode_products: a gate/up kernel with SiLU x up in its epilogue, and splitting
o_proj / down_proj over K with their partials summed by the add + norm after them.)

What `skinny_linear(x, weight)` guarantees:

- x: [..., K], weight: [N, K] with its last dim contiguous, the same dtype (bf16, fp16 or fp32).
  Result: [..., N] in x's dtype, products summed in float32 (fp32 inputs: exact "ieee" products,
  not tf32).
- Rows beyond MAX_M, other dtypes, or no triton / a CPU tensor outside Triton's interpreter:
  F.linear itself (the fallback).
- Safe to capture in a CUDA graph once warm: fixed launches, no host syncs, no shapes that depend
  on data. The autotuner times its configs at the first call per (M, N, K, dtype): make that
  call before capturing (it also allocates the partials of the largest split it may time,
  [8, M, N] float32 at most; later calls allocate those of the chosen split only).

The kernel (swap-AB): one program per BLOCK_N rows of W and per split of K; it multiplies its
[BLOCK_N, BLOCK_K] tiles of W with x^T ([BLOCK_K, M_PAD], M padded to >= 16 rows for tl.dot) and
keeps a [BLOCK_N, M_PAD] float32 accumulator, so W is read once and x comes from L2. With
SPLIT_K = 1 it writes y directly; with SPLIT_K > 1 each split writes a float32 partial
([SPLIT_K, M, N]) and a second small kernel sums them in a fixed order (deterministic, no
atomics, no zeroing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from planc.backends.torch.runtime.triton_mode import interpreting as _interpreting

try:  # optional: the torch CUDA wheels bring triton; CPU machines may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

MAX_M = 64  # more rows is no longer a skinny product: F.linear
MIN_M = 16  # tl.dot needs >= 16 rows: x is padded up to this
REDUCE_BLOCK = 1024  # elements of y per program of the split-K reduction
SMEM_BYTES = 200 * 1024  # shared memory a config may pipeline into (H100/H200: 227 KiB)
INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1}  # the one config off the GPU
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


_streaming = False
_CHOICE: dict[tuple[Any, ...], str] = {}  # (product, M, N, K, dtype) -> the kernel it runs


def available() -> bool:
    """Whether the Triton kernel can run here (triton importable)."""
    return triton is not None


@contextmanager
def streaming(on: bool) -> Iterator[None]:
    """Within: `linear` and `gated_linear` pick their kernels per shape (when `on`)."""
    global _streaming
    prev, _streaming = _streaming, on
    try:
        yield
    finally:
        _streaming = prev


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """F.linear(x, weight); inside streaming(True), the faster of it and skinny_linear as timed
    on the first product of this shape (module docstring)."""
    key = _key("linear", x, weight)
    if key is None:
        return F.linear(x, weight)
    if key not in _CHOICE:
        _CHOICE[key] = _fastest({"cublas": lambda: F.linear(x, weight),
                                 "triton": lambda: skinny_linear(x, weight)})
    return skinny_linear(x, weight) if _CHOICE[key] == "triton" else F.linear(x, weight)


def gated_linear(gate_up: Tensor, weight: Tensor, silu_mul: Callable[[Tensor], Tensor]
                 ) -> Tensor:
    """linear(silu_mul(gate_up), weight): the MLP's down projection of silu(gate) * up, with
    gate_up [..., 2 K] = (gate | up). Inside streaming(True), per shape, the faster of that
    (two kernels) and skinny_linear reading gate_up itself (one kernel, the SiLU x up made
    in its loads; module docstring). silu_mul may overwrite its input (layers.EAGER's does):
    timing runs on a copy."""
    key = _key("gated", gate_up, weight, gated=True)
    if key is None:
        return linear(silu_mul(gate_up), weight)
    if key not in _CHOICE:
        copy = gate_up.clone()
        _CHOICE[key] = _fastest({
            "separate": lambda: linear(silu_mul(copy), weight),
            "triton_gated": lambda: skinny_linear(copy, weight, gated=True)})
    if _CHOICE[key] == "triton_gated":
        return skinny_linear(gate_up, weight, gated=True)
    return linear(silu_mul(gate_up), weight)


def _key(product: str, x: Tensor, weight: Tensor, gated: bool = False
         ) -> tuple[Any, ...] | None:
    """The choice's key of this product, None when F.linear runs regardless (outside
    streaming, off the GPU, or operands the kernel does not take)."""
    if not _streaming or _interpreting() or not _uses_kernel(x, weight, gated):
        return None
    return (product, x.numel() // x.shape[-1], weight.shape[0], weight.shape[1], x.dtype)


def _fastest(candidates: dict[str, Callable[[], Tensor]]) -> str:
    """The candidate with the least median time by triton's do_bench (which flushes the L2
    cache before each launch), each run once first (the Triton autotuner's call)."""
    from triton.testing import do_bench  # only on the GPU: not at import

    times = {}
    for name, fn in candidates.items():
        fn()
        times[name] = do_bench(fn, warmup=5, rep=40, return_mode="median")
    return min(times, key=lambda n: times[n])


def choices() -> dict[str, str]:
    """Which kernel each timed product runs ("linear MxNxK dtype" -> its name)."""
    return {f"{p} {m}x{n}x{k} {str(dt).removeprefix('torch.')}": name
            for (p, m, n, k, dt), name in sorted(_CHOICE.items(), key=str)}


# --------------------------------------------------------------------------------------------
# Kernels


def _gemm_body(
    X, W, Y, P, M, N, K, sx_m, sw_n, sw_k, sy_m,
    M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, DOT_F32: tl.constexpr, GATED: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Program (n block, split): acc[BLOCK_N, M_PAD] = W[n block, split's K] @ x[:, split's K]^T.

    DOT_F32: tl.dot on float32 operands with exact ("ieee") products, for fp32 inputs (tf32
    would lose digits) and under the interpreter, whose bf16 tl.dot is wrong (see
    decode_kernels); bf16/fp16 products are exact in float32, so the sum is the same.
    GATED: X is [M, 2 K] = (gate | up) and the product's x is silu(gate) * up, each step
    rounded to X's dtype as the eager ops round it (F.silu, then the multiply).
    PDL: launched with programmatic dependent launch, the program first waits for the kernel
    before it (runtime/dependent_launch.py)."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, M_PAD)
    n_ok = offs_n < N
    m_ok = offs_m < M
    rows = offs_n.to(tl.int64)  # N * K may pass 2**31 (a large vocabulary's lm_head)
    # this split's K tiles: the tiles shared out evenly, the last splits may get fewer (or none)
    n_tiles = tl.cdiv(K, BLOCK_K)
    per = tl.cdiv(n_tiles, SPLIT_K)
    t_lo = split * per
    t_hi = tl.minimum(t_lo + per, n_tiles)
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    acc = tl.zeros([BLOCK_N, M_PAD], dtype=tl.float32)
    for t in range(t_lo, t_hi):
        offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w = tl.load(W + rows[:, None] * sw_n + offs_k[None, :] * sw_k,
                    mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        x_ptrs = X + offs_m[None, :] * sx_m + offs_k[:, None]
        x_ok = k_ok[:, None] & m_ok[None, :]
        if GATED:
            gate = tl.load(x_ptrs, mask=x_ok, other=0.0).to(tl.float32)
            up = tl.load(x_ptrs + K, mask=x_ok, other=0.0).to(tl.float32)
            silu = (gate / (1.0 + tl.exp(-gate))).to(X.dtype.element_ty).to(tl.float32)
            xt = (silu * up).to(X.dtype.element_ty)
        else:
            xt = tl.load(x_ptrs, mask=x_ok, other=0.0)
        if DOT_F32:
            acc += tl.dot(w.to(tl.float32), xt.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(w, xt)
    mask = n_ok[:, None] & m_ok[None, :]
    if SPLIT_K == 1:
        tl.store(Y + offs_m[None, :] * sy_m + offs_n[:, None], acc.to(Y.dtype.element_ty),
                 mask=mask)
    else:  # partial [SPLIT_K, M, N] float32, contiguous
        tl.store(P + split * M * N + offs_m[None, :] * N + offs_n[:, None], acc, mask=mask)


def _reduce_body(P, Y, M, N, sy_m, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """y[m, n] = sum over splits of P[s, m, n] (in split order), cast to y's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M * N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(P + s * M * N + offs, mask=ok, other=0.0)
    m = offs // N
    n = offs % N
    tl.store(Y + m * sy_m + n, acc.to(Y.dtype.element_ty), mask=ok)


def _reduce(reduce: Any, parts: Tensor, y: Tensor, split_k: int) -> None:
    """Launch the split-K reduction of parts[:split_k] into y (nothing when split_k == 1)."""
    if split_k == 1:
        return
    m, n = y.shape
    reduce[(triton.cdiv(m * n, REDUCE_BLOCK),)](parts, y, m, n, y.stride(0),
                                               SPLIT_K=split_k, BLOCK=REDUCE_BLOCK)


# --------------------------------------------------------------------------------------------
# Building: lazily, per interpreter mode (as decode_kernels does)


_BUILT: dict[bool, tuple[Any, Any, Any]] = {}
_SPLIT_OF: dict[tuple, int] = {}  # (M, N, K, dtype, gated) -> the autotuner's SPLIT_K


def _configs() -> list:  # type: ignore[type-arg]
    """The autotuner's candidates (32): tiles of W of 8-32 KiB bf16 per pipeline stage (enough
    bytes in flight per SM to stream HBM), each with SPLIT_K 1..8 (split K when N alone gives
    too few programs to fill the GPU). `_prune` drops or trims them per shape."""
    if triton is None:
        return []
    tiles = [  # (BLOCK_N, BLOCK_K, num_warps, num_stages)
        (16, 256, 4, 5), (32, 128, 4, 5), (32, 256, 4, 4), (64, 128, 4, 4),
        (64, 256, 8, 3), (128, 64, 4, 4), (128, 128, 8, 3), (128, 128, 4, 4),
    ]
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk},
                          num_warps=w, num_stages=s)
            for bn, bk, w, s in tiles for sk in (1, 2, 4, 8)]


def _prune(configs: list, named_args: dict, **kwargs: Any) -> list:  # type: ignore[type-arg]
    """Per shape: no split leaves a split without a K tile; no split-K once the N blocks alone
    fill every SM four times (it would only add partial traffic); stages trimmed to fit the
    shared memory (x's padded tile included). Keeps at least one config."""
    args = {**named_args, **kwargs}
    n, k, m_pad, w = args["N"], args["K"], args["M_PAD"], args["W"]
    sms = _sm_count(w.device)
    kept, seen = [], set()
    for c in configs:
        bn, bk, sk = c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["SPLIT_K"]
        if sk > 1 and (k < bk * sk or triton.cdiv(n, bn) >= 4 * sms):
            continue
        stages = min(c.num_stages, SMEM_BYTES // ((bn + m_pad) * bk * w.element_size()))
        key = (bn, bk, sk, c.num_warps, stages)
        if stages >= 2 and key not in seen:
            seen.add(key)
            kept.append(triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=stages))
    return kept or [configs[0]]


def _post_hook(nargs: dict, exception: BaseException | None = None) -> None:
    """After each config's timed launch: its split-K reduction, so the timing the autotuner
    compares is the whole product, not the partials alone."""
    if exception is None:
        _reduce(_kernels()[2], nargs["P"], nargs["Y"], nargs["SPLIT_K"])


def _bench(fn: Callable, quantiles: Any = None) -> Any:
    """The autotuner's timer: triton's do_bench (L2 flushed before each launch) shortened from
    25 + 100 ms per config, which the ~30 configs x every shape would make minutes."""
    from triton.testing import do_bench  # only on the GPU: not at import
    return do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def _kernels() -> tuple[Any, Any, Any]:
    """(jitted GEMM, autotuned GEMM or None under the interpreter, jitted reduction), built on
    first use: triton.jit reads TRITON_INTERPRET when it wraps a function, so building late lets
    a test run them in Triton's interpreter on CPU tensors."""
    interpret = _interpreting()
    if interpret not in _BUILT:
        gemm = triton.jit(_gemm_body)
        tuned = None
        if not interpret:  # the autotuner times on the GPU; the interpreter runs one config
            tuned = triton.autotune(_configs(), key=["M", "N", "K", "GATED"],
                                    post_hook=_post_hook,
                                    prune_configs_by={"early_config_prune": _prune},
                                    do_bench=_bench)(triton.jit(_gemm_body))
        _BUILT[interpret] = (gemm, tuned, triton.jit(_reduce_body))
    return _BUILT[interpret]


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the device; 4 off CUDA (the interpreter)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def best_config() -> dict | None:
    """The autotuner's config of its latest call (its tile, split, warps, stages), or None."""
    if not _BUILT or triton is None:
        return None
    tuned = _kernels()[1]
    cfg = getattr(tuned, "best_config", None)
    if cfg is None:
        return None
    return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


# --------------------------------------------------------------------------------------------
# Entry point


def _uses_kernel(x: Tensor, weight: Tensor, gated: bool = False) -> bool:
    """Whether skinny_linear runs the Triton kernel for these operands (else F.linear)."""
    if triton is None or x.dtype != weight.dtype or x.dtype not in _DTYPES:
        return False
    if weight.dim() != 2 or weight.stride(-1) != 1 or x.device != weight.device:
        return False
    if x.shape[-1] != weight.shape[1] * (2 if gated else 1):
        return False
    m = x.numel() // max(x.shape[-1], 1)
    return 1 <= m <= MAX_M and (x.is_cuda or _interpreting())


def skinny_linear(x: Tensor, weight: Tensor, config: dict[str, int] | None = None,
                  gated: bool = False) -> Tensor:
    """y = x @ weight^T for few rows of x (see the module docstring); with `gated`,
    y = (silu(gate) * up) @ weight^T of x = (gate | up) [..., 2 K].

    config: {"BLOCK_N", "BLOCK_K", "SPLIT_K"} (and optionally "num_warps", "num_stages") runs
    that config instead of the autotuner's (tests, experiments); under the interpreter
    INTERPRETER_CONFIG is the default."""
    if not _uses_kernel(x, weight, gated):
        if gated:
            gate, up = x.chunk(2, dim=-1)
            return F.linear(F.silu(gate) * up, weight)
        return F.linear(x, weight)
    k = weight.shape[1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], weight.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    gemm, tuned, reduce = _kernels()
    common = {"M_PAD": max(MIN_M, triton.next_power_of_2(m)),
              "DOT_F32": x.dtype == torch.float32 or _interpreting(), "GATED": gated}
    if config is None and tuned is None:
        config = INTERPRETER_CONFIG
    if config is not None:
        split_k = config["SPLIT_K"]
        parts = _partials(split_k, m, n, x.device)
        grid = (triton.cdiv(n, config["BLOCK_N"]), split_k)
        gemm[grid](x2, weight, y, parts, m, n, k, x2.stride(0), weight.stride(0),
                   weight.stride(1), y.stride(0),
                   **common, **config)
    else:
        key = (m, n, k, x.dtype, gated)
        split_k = _SPLIT_OF.get(key, 0)  # 0: not tuned yet: room for the largest split kept
        parts = _partials(split_k or _max_split(n, k, common["M_PAD"], weight), m, n, x.device)
        tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])](
            x2, weight, y, parts, m, n, k, x2.stride(0), weight.stride(0), weight.stride(1),
            y.stride(0),
            **common)
        if not split_k:
            split_k = _SPLIT_OF[key] = tuned.best_config.kwargs["SPLIT_K"]
    _reduce(reduce, parts, y, split_k)
    return y.reshape(*x.shape[:-1], n)


def _max_split(n: int, k: int, m_pad: int, weight: Tensor) -> int:
    """The largest SPLIT_K among the configs the autotuner will time for this shape."""
    kept = _prune(_configs(), {"N": n, "K": k, "M_PAD": m_pad, "W": weight})
    return max(c.kwargs["SPLIT_K"] for c in kept)


def _partials(split_k: int, m: int, n: int, device: torch.device) -> Tensor:
    """The float32 partial buffer [split_k, m, n] (one element when split_k == 1: unused)."""
    if split_k == 1:
        return torch.empty(1, dtype=torch.float32, device=device)
    return torch.empty(split_k, m, n, dtype=torch.float32, device=device)
