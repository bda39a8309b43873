"""Shared helpers for the torchrun-based tests: tiny Llama configs, a free port, emit + launch."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from planc.backends.torch.runtime.config import ModelDims, RunConfig

TINY = {"arch": "llama", "layers": 4, "hidden": 64, "heads": 8, "head_dim": 8, "ffn": 128}


def tiny_config(
    mesh: tuple[tuple[str, int], ...],
    splits: dict[str, tuple[str, ...]],
    *,
    kv_heads: int = 4,
    vocab: int | None = None,
    **run: Any,
) -> RunConfig:
    """A float32 RunConfig small enough for 2 shared cores: one untimed-free timed forward."""
    model = ModelDims(kv_heads=kv_heads, vocab=vocab, **TINY)
    fields: dict[str, Any] = {"batch": 4, "seq": 16, "warmup": 0, "repeats": 1, **run}
    return RunConfig(model=model, mesh=mesh, splits=splits, **fields)


def tensor_parallel(axis: str) -> dict[str, tuple[str, ...]]:
    return {"heads": (axis,), "kv_heads": (axis,), "ffn": (axis,)}


@pytest.fixture
def tiny() -> Callable[..., RunConfig]:
    return tiny_config


@pytest.fixture
def tp() -> Callable[[str], dict[str, tuple[str, ...]]]:
    return tensor_parallel


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def run_plan(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Emit `cfg` to a file and run it with torchrun on CPU; returns rank 0's metrics."""
    from planc.backends.torch.emit import emit_program
    from planc.backends.torch.launch import run_program

    def run(cfg: RunConfig, name: str, **launch: Any) -> dict[str, Any]:
        prog = tmp_path / f"{name}.py"
        prog.write_text(emit_program(cfg, plan_name=name, source_file=f"{name}.plan"))
        launch.setdefault("nproc", cfg.world_size)
        launch.setdefault("timeout_s", 120)
        return run_program(prog, device="cpu", **launch)

    return run
