"""The torch tier: tests that need torch, safetensors or transformers but start no processes
(tiny checkpoints made by transformers itself, read back by planc)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")


@pytest.fixture
def triton_device(monkeypatch: pytest.MonkeyPatch) -> str:
    """Where a Triton kernel of the decode step runs: CUDA, else Triton's interpreter on CPU
    tensors (tests/conftest.py sets TRITON_INTERPRET=1 without an NVIDIA GPU; the env var is
    scoped to the test, and the kernels are built on first use under each mode)."""
    import torch

    from planc.backends.torch.runtime import decode_kernels as dk

    if not dk.available():
        pytest.skip("triton is not installed")
    if torch.cuda.is_available():
        return "cuda"
    from triton.runtime.interpreter import InterpretedFunction
    if not isinstance(dk.triton.language.standard.cdiv, InterpretedFunction):
        pytest.skip("no CUDA, and triton was imported before this module outside interpreter "
                    "mode (its standard library is not interpretable then)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return "cpu"
