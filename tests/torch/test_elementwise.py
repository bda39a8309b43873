"""The layer's elementwise math: the torch.compile fusions the static decode step records on a
GPU (layers.compiled_elementwise) compute what the eager ops every phase runs compute
(layers.EAGER), here compiled by inductor for the CPU: same shapes, strided views as inputs
(q and k are views of the fused q/k/v output), float32 to rounding and bfloat16 bit for bit
(inductor told to round each intermediate as the eager ops do)."""

from __future__ import annotations

import pytest
import torch

from planc.backends.torch.runtime import layers


@pytest.fixture(scope="module")
def fused() -> layers.Elementwise:
    return layers.compiled_elementwise()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_compiled_elementwise_equals_the_eager_ops(fused, dtype, tol):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 64, generator=g).to(dtype)
    w = torch.randn(64, generator=g).to(dtype)
    qkv = torch.randn(3, 1, 12, 16, generator=g).to(dtype)  # 8 q heads, 2 k, 2 v
    cos, sin = torch.randn(3, 1, 1, 8, generator=g).to(dtype), torch.randn(3, 1, 1, 8).to(dtype)
    gate_up = torch.randn(3, 1, 96, generator=g).to(dtype)

    def close(a: torch.Tensor, b: torch.Tensor) -> None:
        assert a.shape == b.shape
        err = (a.float() - b.float()).abs().max().item()
        assert err <= tol * max(1.0, b.float().abs().max().item()), err

    def same(a: torch.Tensor, b: torch.Tensor) -> None:
        """bfloat16: the same bits (the fusions round each step as the eager ops do); float32:
        to rounding (the order of a reduction, fused multiply-adds)."""
        if dtype == torch.bfloat16:
            assert torch.equal(a, b), (a.float() - b.float()).abs().max().item()
        else:
            close(a, b)

    same(fused.norm(x, w, 1e-5), layers.EAGER.norm(x.clone(), w, 1e-5))
    q_view = qkv[:, :, :8]
    expect = layers.EAGER.rope(qkv.clone()[:, :, :8], cos, sin)
    same(fused.rope(q_view, cos, sin), expect)
    assert torch.equal(q_view, qkv[:, :, :8])  # the fused form leaves its input alone
    same(fused.silu_mul(gate_up), layers.EAGER.silu_mul(gate_up.clone()))
    delta = torch.randn(3, 1, 64, generator=g).to(dtype)
    x_fused, x_eager = x.clone(), x.clone()
    same(fused.add_norm(x_fused, delta, w, 1e-5), layers.EAGER.add_norm(x_eager, delta, w, 1e-5))
    assert torch.equal(x_fused, x + delta)  # both update the residual stream in place
    assert torch.equal(x_eager, x + delta)
    # the addend as float32 partial products (decode_products.split_product): their sum
    # rounded once to the dtype, as the GEMM that makes them whole rounds its output
    parts = torch.randn(3, 3, 1, 64, generator=g)
    whole = parts.sum(0).to(dtype)
    x_fused, x_eager, x_ref = x.clone(), x.clone(), x.clone()
    same(fused.add_parts_norm(x_fused, parts, w, 1e-5),
         layers.EAGER.add_parts_norm(x_eager, parts, w, 1e-5))
    same(layers.EAGER.add_parts_norm(x.clone(), parts, w, 1e-5),
         layers.EAGER.add_norm(x_ref, whole, w, 1e-5))
    assert torch.equal(x_fused, x + whole) and torch.equal(x_eager, x + whole)
    # a pipeline stage's last add (no norm after it): the same sum, in place
    x_fused, x_eager = x.clone(), x.clone()
    fused.add_parts(x_fused, parts)
    layers.EAGER.add_parts(x_eager, parts)
    assert torch.equal(x_fused, x + whole) and torch.equal(x_eager, x + whole)


def test_the_eager_ops_are_the_default_and_the_context_restores_them(fused):
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(layers._ops)
            return x

    with layers.elementwise(fused):
        Probe()(torch.zeros(1))
    Probe()(torch.zeros(1))
    assert seen == [fused, layers.EAGER]
