"""The RunConfig a program executes is read from the placement graph the verifier proved."""

from __future__ import annotations

from pathlib import Path

import pytest

from planc.backends.torch.runconfig import to_run_config
from planc.compiler.lower import lower
from planc.diagnostics import Diagnostics
from planc.pipeline import load

LOCAL = Path(__file__).resolve().parents[2] / "specs" / "local"


def _compiled(name: str):  # type: ignore[no-untyped-def]
    spec, _ = load(str(LOCAL / f"{name}.plan"), Diagnostics())
    assert spec is not None
    plan = spec.plans[0]
    return plan, lower(plan)


@pytest.mark.parametrize("name", ["tp2_pp2", "headdim_2x2", "ring4", "ep2_tp2", "layerwise4",
                                  "decode_tp2_pp2"])
def test_the_run_configuration_is_the_graphs_placement(name):
    plan, graph = _compiled(name)
    cfg = to_run_config(plan, graph)
    assert cfg.mesh == tuple((a.name, a.size) for a in graph.mesh.axes)
    assert cfg.splits == {d: tuple(a) for d, a in graph.splits.items()}
    assert cfg.attention == graph.attention and cfg.microbatches == graph.microbatches
    if "layers" in graph.splits:
        assert cfg.stages == tuple(s.layers for s in graph.stages)
    formats = {s.format for c in graph.classes for s in c.shards}
    assert cfg.compress_int8 == any("int8" in f for f in formats)
    assert cfg.phase == graph.phase and cfg.seq == graph.seq


def test_a_different_graph_gives_a_different_run_configuration():
    plan, graph = _compiled("tp2_pp2")
    stages = [s.model_copy(update={"layers": (0, 1) if s.index == 0 else (1, 4)})
              for s in graph.stages]
    moved = graph.model_copy(update={"stages": stages, "microbatches": 1})
    cfg = to_run_config(plan, moved)
    assert cfg.stages == ((0, 1), (1, 4)) and cfg.microbatches == 1
    assert to_run_config(plan, graph).stages != cfg.stages
