"""The torch tier: tests that need torch, safetensors or transformers but start no processes
(tiny checkpoints made by transformers itself, read back by planc)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")
