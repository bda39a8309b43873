"""decode_products.gate_up_silu: SiLU x up in the gate/up GEMM's epilogue, against the eager ops
(F.linear, F.silu, the multiply, each rounded to the dtype) on a float64 product, in Triton's
interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1 without an NVIDIA GPU) or
on CUDA. Tiny shapes: rows 1, 3 and 16, ffn and hidden multiples and non-multiples of the
tiles, both weight layouts, fp32 and bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from planc.backends.torch.runtime import decode_products as dm


@pytest.fixture
def device(triton_device: str) -> str:
    """tests/torch/conftest.py's triton_device: CUDA, else Triton's interpreter on CPU."""
    return triton_device


def _reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The eager rounding steps on a float64 product: gate and up rounded to the dtype, F.silu
    of the gate rounded, the product rounded."""
    gu = (x.double() @ w.double().T).to(x.dtype)
    gate, up = gu.chunk(2, dim=-1)
    return F.silu(gate) * up


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("in_major", [False, True], ids=["out_major", "in_major"])
@pytest.mark.parametrize("m,ffn,k,bn,bk", [(1, 32, 64, 16, 32), (3, 40, 70, 16, 32),
                                           (16, 17, 48, 16, 16)])
def test_gate_up_silu_is_silu_of_gate_times_up(device, m, ffn, k, bn, bk, in_major, dtype):
    gen = torch.Generator().manual_seed(m * 1000 + ffn * 10 + k)
    x = torch.randn(2, m, k, generator=gen).to(device, dtype)[1]  # rows of a larger buffer
    w = torch.randn(2 * ffn, k, generator=gen).to(device, dtype)
    if in_major:
        w = w.t().contiguous().t()  # layers.laid_out's CUDA layout: strides (1, 2 ffn)
    y = dm.gate_up_silu(x, w, {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": 4, "num_stages": 1})
    ref = _reference(x, w)
    assert y.shape == (m, ffn) and y.dtype == dtype
    # fp32: the float32 sum's order; bf16: a gate or up one unit off (the interpreter casts
    # float32 to bf16 by truncation) moves the product by about two units
    tol = 1e-5 if dtype == torch.float32 else 2 ** -6
    torch.testing.assert_close(y.double(), ref.double(), rtol=tol,
                               atol=tol * ref.abs().max().item())


def test_gate_up_silu_rounds_as_the_eager_ops_bit_for_bit(device):
    """On CUDA, where a float32 -> bf16 cast rounds to nearest as torch's does: integer
    operands make every float32 sum exact, so the kernel must give the eager ops' bits. Missing
    the rounding of gate / up before F.silu or of F.silu's result changes some of them.
    (Triton's interpreter casts by truncation: this runs on a GPU only.)"""
    if device != "cuda":
        pytest.skip("bit-exact bf16 rounding needs the GPU (the interpreter truncates)")
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 4, (64, 256), generator=gen).to(device, torch.bfloat16)
    w = torch.randint(-2, 3, (2 * 192, 256), generator=gen).to(device, torch.bfloat16) / 8
    for weight in (w, w.t().contiguous().t()):
        y = dm.gate_up_silu(x, weight)
        assert torch.equal(y, dm.gate_up_silu_eager(x, weight))


def test_leading_dims_default_config_and_fallback(device, monkeypatch):
    """x [r, 1, hidden] as the decode step passes it, the default config; rows beyond MAX_M
    run the eager pair itself."""
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(2 * 24, 40, generator=gen).to(device, torch.float32)
    x = torch.randn(5, 1, 40, generator=gen).to(device, torch.float32)
    y = dm.gate_up_silu(x, w)
    assert y.shape == (5, 1, 24)
    torch.testing.assert_close(y, dm.gate_up_silu_eager(x, w), rtol=1e-5, atol=1e-5)
    big = torch.randn(dm.MAX_M + 1, 40, generator=gen).to(device, torch.float32)
    assert not dm.usable(big, w)
    monkeypatch.setattr(dm, "_kernel", lambda: pytest.fail("the kernel ran beyond MAX_M"))
    torch.testing.assert_close(dm.gate_up_silu(big, w), dm.gate_up_silu_eager(big, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("in_major", [False, True], ids=["out_major", "in_major"])
@pytest.mark.parametrize("parts", [1, 2, 4])
@pytest.mark.parametrize("kernel", [False, True], ids=["bmm", "triton"])
def test_split_product_partials_sum_to_the_product(device, kernel, parts, in_major, dtype):
    """split_product's float32 partials: each the product over its slice of K (float64
    reference), their sum the whole product; by the batched GEMM (on CUDA: bmm's float32
    output; on the CPU: the upcast operands) and by the Triton kernel (Triton's interpreter
    off the GPU), whose tiles of K (32 in the interpreter, 64 at 3 rows on CUDA) share K = 256
    out in equal slices at 1, 2 and 4 parts."""
    gen = torch.Generator().manual_seed(parts)
    x = torch.randn(3, 1, 256, generator=gen).to(device, dtype)
    w = torch.randn(24, 256, generator=gen).to(device, dtype)
    if in_major:
        w = w.t().contiguous().t()
    out = dm.split_product(x, w, parts, kernel=kernel)
    assert out.shape == (parts, 3, 1, 24) and out.dtype == torch.float32
    xd, wd = x.double(), w.double()
    out = out.cpu()
    xd, wd = xd.cpu(), wd.cpu()
    step = 256 // parts
    for i in range(parts):
        ref = xd[..., i * step:(i + 1) * step] @ wd[:, i * step:(i + 1) * step].T
        torch.testing.assert_close(out[i].double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sum(0).double(), xd @ wd.T, rtol=1e-5, atol=1e-4)


def test_split_kernel_applies_on_cuda_to_split_products_of_up_to_64_rows():
    assert dm.split_kernel_applies(True, 64, 2) == (dm.triton is not None)
    assert not dm.split_kernel_applies(True, 65, 2) and not dm.split_kernel_applies(True, 8, 1)
    assert not dm.split_kernel_applies(False, 8, 4)


def test_the_benchmarks_triton_split_candidate_sums_to_the_product(device):
    """benchmarks/decode_splitk_h200.py's forced-tile split (decode_products.split_kernel): its
    partials over 1, 3 and 4 slices of K sum to the product, the last slice short or empty."""
    import sys
    from pathlib import Path

    bench_dir = str(Path(__file__).resolve().parents[2] / "benchmarks")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    import decode_splitk_h200 as bench

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 256, generator=gen).to(device)
    w = torch.randn(256, 40, generator=gen).to(device)  # [K, N]
    for cfg in ({"SPLITS": 1, "BLOCK_N": 16, "BLOCK_K": 32},
                {"SPLITS": 3, "BLOCK_N": 16, "BLOCK_K": 64},
                {"SPLITS": 4, "BLOCK_N": 32, "BLOCK_K": 16}):
        p = bench.triton_split_linear(x, w, dict(cfg))
        assert p.shape == (cfg["SPLITS"], 3, 40) and p.dtype == torch.float32
        torch.testing.assert_close(p.sum(0), x @ w, rtol=1e-3, atol=1e-3)
