"""The plain linears' weight layout (runtime/layers.weight_layout, laid_out): the same values
and products in either layout, input-major on CUDA, the checkpoint's own elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from planc.backends.torch.runtime import layers


def test_cpu_keeps_the_checkpoint_layout_and_cuda_stores_input_major(monkeypatch):
    monkeypatch.delenv("PLANC_WEIGHT_LAYOUT", raising=False)
    monkeypatch.delenv("PLANC_DECODE_GEMM", raising=False)
    assert layers.weight_layout(torch.device("cpu")) == "out_major"
    assert layers.weight_layout(torch.device("cuda", 0)) == "in_major"
    monkeypatch.setenv("PLANC_WEIGHT_LAYOUT", "in_major")
    assert layers.weight_layout(torch.device("cpu")) == "in_major"
    monkeypatch.setenv("PLANC_WEIGHT_LAYOUT", "sideways")  # not a layout: the default
    assert layers.weight_layout(torch.device("cpu")) == "out_major"
    monkeypatch.delenv("PLANC_WEIGHT_LAYOUT")
    monkeypatch.setenv("PLANC_DECODE_GEMM", "timed")  # the streaming kernel reads rows
    assert layers.weight_layout(torch.device("cuda", 0)) == "out_major"


@pytest.mark.parametrize("layout", layers.WEIGHT_LAYOUTS)
def test_laid_out_weight_has_the_same_values_and_products(monkeypatch, layout):
    monkeypatch.setenv("PLANC_WEIGHT_LAYOUT", layout)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 16, generator=g)
    x = torch.randn(3, 16, generator=g)
    lw = layers.laid_out(w)
    assert lw.shape == w.shape and torch.equal(lw, w)
    assert lw.stride() == ((1, 24) if layout == "in_major" else (16, 1))
    lin = layers.Linear(lw)
    torch.testing.assert_close(lin(x), F.linear(x, w), rtol=1e-6, atol=1e-6)
    assert lin.weight.untyped_storage().nbytes() == w.numel() * w.element_size()  # one copy
