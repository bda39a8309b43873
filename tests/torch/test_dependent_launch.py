"""runtime/dependent_launch.py: when the decode step's Triton kernels launch with PDL, what
they are passed, and the rules their bodies keep (nothing read that a kernel before writes,
nothing written, before the wait; dependents launched only after it)."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from planc.backends.torch.runtime import decode_gemm, decode_kernels, decode_products
from planc.backends.torch.runtime import dependent_launch as dl

PDL_BODIES = [decode_kernels._attn_partials_body, decode_kernels._merge_body,
              decode_kernels._argmax_parts_body, decode_kernels._argmax_pick_body,
              decode_kernels._finish_step_body, decode_gemm._gemm_body,
              decode_products._gate_up_silu_body]


@pytest.fixture
def hopper(monkeypatch):
    """A CUDA device of compute capability 9.0 as dependent_launch sees one (no GPU needed)."""
    monkeypatch.setattr(dl, "interpreting", lambda: False)
    monkeypatch.setattr(dl, "_gdc_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("PLANC_DECODE_PDL", raising=False)
    return torch.device("cuda", 0)


def test_pdl_only_on_hopper_and_up_outside_the_interpreter(hopper, monkeypatch):
    if dl.triton is None:
        pytest.skip("no triton")
    assert dl.enabled(hopper)
    assert dl.kernel_args(hopper) == {"PDL": True, "launch_pdl": True}
    assert not dl.enabled(torch.device("cpu"))
    assert dl.kernel_args(torch.device("cpu")) == {}
    monkeypatch.setenv("PLANC_DECODE_PDL", "0")
    assert not dl.enabled(hopper)
    monkeypatch.delenv("PLANC_DECODE_PDL")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert not dl.enabled(hopper)  # Ampere: no griddepcontrol
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(dl, "interpreting", lambda: True)
    assert not dl.enabled(hopper)


def test_off_the_gpu_no_kernel_gets_a_pdl_argument():
    """The interpreter and CPU tensors: the kernels' PDL defaults (False) and no launch option."""
    assert dl.kernel_args(torch.device("cpu")) == {}


def _before_wait(body) -> str:  # type: ignore[no-untyped-def]
    """The body's code (docstring dropped) before its gdc_wait, which every body has."""
    src = inspect.getsource(body)
    src = re.sub(r'""".*?"""', "", src, count=1, flags=re.DOTALL)
    assert "tl.extra.cuda.gdc_wait()" in src, f"{body.__name__} has no gdc_wait"
    return src.split("tl.extra.cuda.gdc_wait()")[0]


@pytest.mark.parametrize("body", PDL_BODIES, ids=lambda b: b.__name__)
def test_nothing_is_loaded_or_stored_before_the_wait(body):
    """Before the wait a kernel may run before the one it follows has finished: no memory
    access there (tl.load / tl.store / atomics / inline asm)."""
    head = _before_wait(body)
    assert not re.search(r"tl\.(load|store|atomic_\w+|inline_asm_elementwise)\(", head), \
        body.__name__


@pytest.mark.parametrize("body", PDL_BODIES, ids=lambda b: b.__name__)
def test_dependents_are_launched_only_after_the_wait(body):
    src = inspect.getsource(body)
    wait = src.index("tl.extra.cuda.gdc_wait()")
    launch = src.index("tl.extra.cuda.gdc_launch_dependents()")
    assert wait < launch, body.__name__
    assert "PDL: tl.constexpr = False" in src  # off unless a launch asks (the interpreter)
