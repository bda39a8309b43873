"""vocab_parallel.first_argmax: the two-pass argmax of the greedy token equals torch's argmax,
the first index of the maximum, ties between and inside parts included."""

from __future__ import annotations

import pytest
import torch

from planc.backends.torch.runtime.vocab_parallel import first_argmax


@pytest.mark.parametrize("n,chunks", [(1024, 256), (1000, 256), (997, 256), (128256, 256)])
def test_first_argmax_is_argmax(n, chunks):
    g = torch.Generator().manual_seed(n)
    logits = torch.randn(5, n, generator=g).to(torch.bfloat16)  # bf16: ties happen
    logits[1, :] = 0.0  # all tied: index 0
    logits[2, n // 3] = logits[2, n - 1] = 9.0  # tie across parts: the first
    logits[3, 1] = logits[3, 2] = 9.0  # tie inside a part
    assert torch.equal(first_argmax(logits, chunks), logits.argmax(dim=-1))
    assert first_argmax(logits, chunks).tolist()[1:4] == [0, n // 3, 1]
