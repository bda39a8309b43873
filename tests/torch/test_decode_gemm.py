"""decode_gemm: the skinny Triton GEMM against a float64 reference, in Triton's interpreter on
CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1 without an NVIDIA GPU) or on CUDA.

Tiny shapes (the interpreter is slow): rows 1, 3 and 16 (padded to 16 for tl.dot), N and K both
multiples and non-multiples of the blocks, SPLIT_K 1, 2 and 3 (3 leaves the last split short
or empty), fp32 and bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from planc.backends.torch.runtime import decode_gemm as dg


@pytest.fixture
def device(triton_device: str) -> str:
    """tests/torch/conftest.py's triton_device: CUDA, else Triton's interpreter on CPU."""
    return triton_device


def _operands(m: int, n: int, k: int, dtype: torch.dtype, device: str):
    gen = torch.Generator().manual_seed(100 * m + 10 * n + k)
    x = torch.randn(m, k, generator=gen).to(device, dtype)
    w = torch.randn(n, k, generator=gen).to(device, dtype)
    return x, w


def _check(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """y against x @ w^T in float64: fp32 to 1e-5; bf16 to two of its units in the last place
    (the interpreter casts float32 to bf16 by truncation, not rounding to nearest)."""
    ref = x.double() @ w.double().T
    assert y.dtype == x.dtype and y.shape == ref.shape
    tol = 1e-5 if x.dtype == torch.float32 else 2 ** -7
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


CONFIGS = [  # (BLOCK_N, BLOCK_K, SPLIT_K)
    (16, 32, 1), (16, 16, 2), (32, 16, 3),
]
SHAPES = [(1, 32, 64), (3, 40, 70), (16, 17, 48)]  # (M, N, K)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bn,bk,sk", CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_skinny_linear_matches_reference(device, m, n, k, bn, bk, sk, dtype):
    x, w = _operands(m, n, k, dtype, device)
    y = dg.skinny_linear(x, w, {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk})
    _check(y, x, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bn,bk,sk", [(16, 32, 1), (16, 16, 3)], ids=lambda v: str(v))
def test_gated_skinny_linear_is_the_down_projection_of_silu_times_up(device, bn, bk, sk, dtype):
    """gated: x = (gate | up) [M, 2K] and y = (silu(gate) * up) @ w^T, against the eager ops
    (F.silu then the multiply, each rounded to the dtype) and a float64 product of them."""
    gate_up, w = _operands(3, 40, 140, dtype, device)
    w = w[:, :70].contiguous()
    y = dg.skinny_linear(gate_up, w, {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, gated=True)
    gate, up = gate_up.chunk(2, dim=-1)
    _check(y, F.silu(gate) * up, w)


def test_default_config_and_leading_dims(device):
    """Without a config (the interpreter's fixed one, or the autotuner's on CUDA): x [2, 3, K],
    a strided x (a column slice) and a weight that is a row slice of a bigger one."""
    x, w = _operands(6, 50, 40, torch.float32, device)
    big = torch.randn(70, 40).to(device)
    y = dg.skinny_linear(x.reshape(2, 3, 40), big[10:60])
    assert y.shape == (2, 3, 50)
    _check(y.reshape(6, 50), x, big[10:60])
    wide = torch.randn(6, 80).to(device)
    _check(dg.skinny_linear(wide[:, ::2], w), wide[:, ::2], w)


def test_falls_back_to_f_linear(monkeypatch):
    """More than MAX_M rows, mixed dtypes, a transposed weight, or no triton: F.linear."""
    x, w = torch.randn(dg.MAX_M + 1, 8), torch.randn(4, 8)
    assert torch.equal(dg.skinny_linear(x, w), F.linear(x, w))
    assert not dg._uses_kernel(x[:2].double(), w)
    assert not dg._uses_kernel(x[:2], torch.randn(8, 4).T)
    monkeypatch.setattr(dg, "triton", None)
    assert not dg.available()
    assert torch.equal(dg.skinny_linear(x[:2], w), F.linear(x[:2], w))


def test_configs_and_pruning():
    """The autotuner's list (~32) and its per-shape pruning: no split beyond K's tiles, no
    split once the N blocks alone fill the SMs, stages trimmed to the shared memory."""
    if not dg.available():
        pytest.skip("triton is not installed")
    configs = dg._configs()
    assert 20 <= len(configs) <= 40
    w = torch.empty(0, dtype=torch.bfloat16)  # a CPU tensor: 4 "SMs"
    few_k = dg._prune(configs, {"N": 64, "K": 128, "M_PAD": 16, "W": w})
    assert all(c.kwargs["SPLIT_K"] * c.kwargs["BLOCK_K"] <= 128 for c in few_k
               if c.kwargs["SPLIT_K"] > 1)
    assert {c.kwargs["SPLIT_K"] for c in few_k} == {1, 2}
    big_n = dg._prune(configs, {"N": 1 << 16, "K": 4096, "M_PAD": 64, "W": w})
    assert {c.kwargs["SPLIT_K"] for c in big_n} == {1}
    for c in big_n:
        stage = (c.kwargs["BLOCK_N"] + 64) * c.kwargs["BLOCK_K"] * 2
        assert 2 <= c.num_stages and c.num_stages * stage <= dg.SMEM_BYTES
    assert dg._max_split(64, 4096, 16, w) == 8


def test_linear_runs_the_faster_kernel_inside_streaming_only(monkeypatch):
    """decode_gemm.linear: F.linear outside `streaming`; inside, per shape, the kernel its
    first product timed faster (timed once per shape), recorded in choices()."""
    calls, timed = [], []
    monkeypatch.setattr(dg, "skinny_linear", lambda x, w: calls.append(w.shape) or F.linear(x, w))

    def fastest(cands):  # type: ignore[no-untyped-def]
        n = cands["cublas"]().shape[-1]  # the F.linear candidate: the weight's N
        timed.append(n)
        return "triton" if n > 20 else "cublas"

    monkeypatch.setattr(dg, "_fastest", fastest)
    monkeypatch.setattr(dg, "_interpreting", lambda: False)  # as on a GPU
    monkeypatch.setattr(dg, "_uses_kernel", lambda x, w, gated=False: True)
    monkeypatch.setattr(dg, "_CHOICE", {})
    x = torch.randn(2, 8)
    wide, narrow = torch.randn(24, 8), torch.randn(16, 8)
    dg.linear(x, wide)
    with dg.streaming(True):
        dg.linear(x, wide)
        dg.linear(x, wide)
        dg.linear(x, narrow)
        with dg.streaming(False):
            dg.linear(x, wide)
    dg.linear(x, wide)
    assert calls == [wide.shape, wide.shape]
    assert timed == [24, 16]  # once per shape
    assert dg.choices() == {"linear 2x16x8 float32": "cublas", "linear 2x24x8 float32": "triton"}


def test_gated_linear_is_down_of_silu_mul_and_times_on_a_copy(monkeypatch):
    """gated_linear: outside streaming, linear(silu_mul(gate_up)); inside, the timed choice,
    which times candidates on a copy (an eager silu_mul overwrites its input) and leaves the
    caller's gate_up to the chosen path."""
    from planc.backends.torch.runtime import layers

    gate_up, w = torch.randn(2, 16), torch.randn(5, 8)
    expect = F.linear(layers.EAGER.silu_mul(gate_up.clone()), w)
    torch.testing.assert_close(dg.gated_linear(gate_up.clone(), w, layers.EAGER.silu_mul), expect)
    monkeypatch.setattr(dg, "_interpreting", lambda: False)
    monkeypatch.setattr(dg, "_uses_kernel", lambda x, w, gated=False: True)
    monkeypatch.setattr(dg, "_CHOICE", {})
    ran = []

    def fastest(cands):  # type: ignore[no-untyped-def]
        for name, fn in cands.items():
            ran.append(name)
            fn()
        return "separate"

    monkeypatch.setattr(dg, "_fastest", fastest)
    monkeypatch.setattr(dg, "skinny_linear",
                        lambda x, w, config=None, gated=False: F.linear(x[..., :8], w))
    mine = gate_up.clone()
    with dg.streaming(True):
        out = dg.gated_linear(mine, w, layers.EAGER.silu_mul)
    assert {"separate", "triton_gated"} <= set(ran)
    torch.testing.assert_close(out, expect)  # the copy took the timing runs' overwrites
    assert dg.choices()["gated 2x5x8 float32"] == "separate"
