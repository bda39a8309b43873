"""`planc calibrate` on the CPU: it measures, writes a device block that resolves `from` the
preset, and plans on that device check. (On a GPU the same command is what benchmarks/
edge_h200.py runs.)"""

from __future__ import annotations

import json
import os

import pytest

from planc.cli import main
from tests.helpers import check_text, resolve_text

pytest.importorskip("torch")

TINY = """
cluster c {
  device CPU_calibrated x 1
}
model tiny { layers 2; hidden 64; heads 8; kv_heads 4; head_dim 8; ffn 128; dtype fp32 }
workload w { batch 2; seq 16 }
plan p { model tiny; cluster c; workload w; mesh x=1 }
"""


def test_calibrate_on_the_cpu_writes_a_device_block_that_plans_can_use(tmp_path, capsys):
    out, js = tmp_path / "cpu.plan", tmp_path / "cpu.json"
    assert main(["calibrate", "--device", "cpu", "--quick", "-o", str(out),
                 "--json", str(js)]) == 0
    block = out.read_text()
    assert "device CPU_calibrated from CPU {" in block
    spec, diags = resolve_text(block + TINY)
    assert not diags.has_errors, [d.message for d in diags]
    d = spec.clusters["c"].device
    assert d.memory == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < d.reserve < d.memory
    assert all(x and x > 0 for x in (d.gemm, d.attention, d.hbm))
    assert d.allreduce is None and d.latency is None  # one device: no links measured
    measured = json.loads(js.read_text())
    assert measured["memory"] == d.memory and measured["reserve"] == d.reserve
    result, _ = check_text(block + TINY)
    assert result.status == "proved"


def test_calibrate_refuses_cuda_without_a_gpu_and_bad_groups_without_a_traceback(capsys):
    import torch

    if not torch.cuda.is_available():
        assert main(["calibrate", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert main(["calibrate", "--device", "cpu", "--gpus", "2", "--groups", "4"]) == 2
    assert main(["calibrate", "--device", "cpu", "--groups", "x"]) == 2
    assert "Traceback" not in capsys.readouterr().err
