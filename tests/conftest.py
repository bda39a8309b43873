"""Shared test fixtures: `--update-goldens` regenerates golden files (review the diff)."""

from __future__ import annotations

import os

import pytest

# Triton decides whether it runs kernels in its interpreter (on CPU tensors) when it is first
# imported, by whichever test imports it first (decode_kernels does, for every decode test).
# Without an NVIDIA GPU, set it for the whole session, so that the Triton flash-decoding tests
# (tests/torch/test_decode_kernels.py) run rather than skip; nothing else runs Triton on a CPU.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true",
                     help="rewrite tests/golden/* from the current output")


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))
