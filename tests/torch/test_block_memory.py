"""The blocks free the normed copy of their input as soon as its GEMM has read it, as
planc/cost/memory.py's layer_program counts it (attn_norm_out, mlp_norm_out end at the first
GEMM). Held longer, a Llama-3-8B batch-64 prefill peaked 1.07 GB above the prediction
(benchmarks/results/h200_decode_run8_planc.json). A weak reference to the norm's output must be
dead by the time the next op of the block runs."""

from __future__ import annotations

import weakref
from dataclasses import replace

import torch
from torch import nn

from planc.backends.torch.runtime import layers


def _watch_norm(monkeypatch) -> list[weakref.ref]:  # type: ignore[no-untyped-def]
    """layers' norm, recording a weak reference to each output."""
    refs: list[weakref.ref] = []

    def norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        out = layers.EAGER.norm(x, w, eps)
        refs.append(weakref.ref(out))
        return out

    monkeypatch.setattr(layers, "_ops", replace(layers.EAGER, norm=norm))
    return refs


class _Probe(nn.Module):
    """A linear that asserts, when it runs, that every watched norm output is gone."""

    def __init__(self, weight: torch.Tensor, refs: list[weakref.ref]) -> None:
        super().__init__()
        self.inner, self.refs = layers.Linear(weight), refs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.refs and all(r() is None for r in self.refs), "the normed input is alive"
        return self.inner(x)


def test_the_mlp_frees_its_normed_input_before_the_down_gemm(monkeypatch):
    refs = _watch_norm(monkeypatch)
    h, f = 16, 32
    mlp = layers.GatedMLP(layers.RMSNorm(torch.ones(h), 1e-5), layers.Linear(torch.randn(2 * f, h)),
                          _Probe(torch.randn(h, f), refs), None)
    assert mlp(torch.randn(2, 3, h)).shape == (2, 3, h)


def test_the_mlp_frees_its_normed_input_before_a_plain_down_weight(monkeypatch):
    """A plain down weight goes through decode_gemm.gated_linear (the static step's way): the
    normed input must be gone by then too."""
    from planc.backends.torch.runtime import decode_gemm

    refs = _watch_norm(monkeypatch)
    seen = []
    original = decode_gemm.gated_linear

    def gated_linear(gate_up, weight, silu_mul):  # type: ignore[no-untyped-def]
        assert refs and all(r() is None for r in refs), "the normed input is alive"
        seen.append(1)
        return original(gate_up, weight, silu_mul)

    monkeypatch.setattr(decode_gemm, "gated_linear", gated_linear)
    h, f = 16, 32
    mlp = layers.GatedMLP(layers.RMSNorm(torch.ones(h), 1e-5), layers.Linear(torch.randn(2 * f, h)),
                          layers.Linear(torch.randn(h, f)), None)
    assert mlp(torch.randn(2, 3, h)).shape == (2, 3, h) and seen == [1]


def test_the_attention_frees_its_normed_input_before_rope(monkeypatch):
    refs = _watch_norm(monkeypatch)
    ropes = []

    def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        assert refs and all(r() is None for r in refs), "the normed input is alive"
        ropes.append(1)
        return layers.EAGER.rope(x, cos, sin)

    monkeypatch.setattr(layers, "_ops", replace(layers._ops, rope=rope))
    hidden, heads, kv, d = 16, 4, 2, 4
    attn = layers.Attention(layers.RMSNorm(torch.ones(hidden), 1e-5),
                            layers.Linear(torch.randn((heads + 2 * kv) * d, hidden)),
                            layers.Linear(torch.randn(hidden, heads * d)), heads, kv,
                            layers.LocalCore(d, causal=True), None)
    tables = layers.rope_tables(torch.arange(3), d, _features(), torch.float32)
    assert attn(torch.randn(2, 3, hidden), tables).shape == (2, 3, hidden)
    assert ropes == [1, 1]  # q and k


def _features():  # type: ignore[no-untyped-def]
    from planc.models.features import ModelFeatures

    return ModelFeatures()
