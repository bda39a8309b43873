"""`planc calibrate --gpus 2` on the CPU (gloo): the links and collective latency are measured
by two processes and written into the block."""

from __future__ import annotations

import pytest

from planc.cli import main
from tests.helpers import resolve_text

pytestmark = pytest.mark.distributed


def test_calibrating_two_processes_measures_allreduce_and_latency(tmp_path):
    out = tmp_path / "cpu2.plan"
    assert main(["calibrate", "--device", "cpu", "--quick", "--gpus", "2", "--groups", "2",
                 "-o", str(out)]) == 0
    spec, diags = resolve_text(out.read_text() + "cluster c {\n  device CPU_calibrated x 2\n}\n")
    assert not [d for d in diags if d.severity == "error"]
    d = spec.clusters["c"].device
    assert d.allreduce and d.allreduce > 0 and d.latency and d.latency > 0
