"""Checkpoint access: each rank reads only its own slices of Hugging Face safetensors files.

Tensor names are Hugging Face's for the Llama-style families (`layers.{i}.self_attn.q_proj.weight`
and, where the family has them, `.q_proj.bias` (Qwen2) and `.q_norm.weight` (Qwen3), `norm.weight`,
`embed_tokens.weight`; MoE experts under each family's names, moe_layout), with or without the
`model.` prefix that ...ForCausalLM writes. A checkpoint is a directory with `model.safetensors`
or the shards listed in `model.safetensors.index.json`; a file is opened on the first read of a
tensor it holds, so a rank opens only the shards of its own tensors (`opened_files`). Slices are
read with `safe_open(...).get_slice(name)`, so a rank touches only the bytes of its own rows /
columns of its own stages' layers, and `place` converts them from the checkpoint's dtype (fp32,
bf16, fp16) to the run's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import Tensor

from planc.backends.torch.runtime.dist import RankContext


def _tensor_files(path: Path) -> dict[str, Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in checkpoint directory {path}")
    names: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            names.update(dict.fromkeys(st.keys(), f))
    return names


class ShardReader:
    """Reads slices of named tensors; `place` moves them to the rank's device and dtype.

    Files open on first use and stay open until `close()`.
    """

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype) -> None:
        self.path = Path(path)
        self.device, self.dtype = device, dtype
        self._files = _tensor_files(self.path)
        self._open: dict[Path, Any] = {}
        self._stack = ExitStack()
        self.on_read: Callable[[str], None] | None = None  # told each tensor name (progress)

    @property
    def opened_files(self) -> list[Path]:
        """The checkpoint files this reader opened: those holding a tensor it read."""
        return list(self._open)

    def close(self) -> None:
        """Close the open files (use with contextlib.closing)."""
        self._stack.close()
        self._open.clear()

    def _slice(self, name: str, shape: tuple[int, ...]) -> Any:
        key = name if name in self._files else "model." + name
        if key not in self._files:
            raise KeyError(f"checkpoint {self.path} has no tensor {name!r} (nor 'model.{name}')")
        f = self._files[key]
        if f not in self._open:
            self._open[f] = self._stack.enter_context(safe_open(str(f), framework="pt"))
        sl = self._open[f].get_slice(key)
        if self.on_read is not None:
            self.on_read(key)
        if tuple(sl.get_shape()) != shape:
            raise ValueError(
                f"checkpoint tensor {key!r} in {f} has shape {tuple(sl.get_shape())}, the plan's "
                f"model needs {shape}: the checkpoint and the plan's model dims disagree"
            )
        return sl

    def full(self, name: str, shape: tuple[int, ...]) -> Tensor:
        return self._slice(name, shape)[:]

    def rows(self, name: str, rows: range, shape: tuple[int, ...]) -> Tensor:
        """Rows [rows.start, rows.stop) of a 2-D weight (column-parallel shard)."""
        return self._slice(name, shape)[rows.start : rows.stop]

    def cols(self, name: str, cols: range, shape: tuple[int, ...]) -> Tensor:
        """Columns [cols.start, cols.stop) of a 2-D weight (row-parallel shard)."""
        return self._slice(name, shape)[:, cols.start : cols.stop]

    def row_indices(self, name: str, rows: list[int], shape: tuple[int, ...]) -> Tensor:
        """Rows `rows` of a 2-D weight, in that order, read as maximal contiguous runs (the
        head x head_dim split holds two runs per head)."""
        sl = self._slice(name, shape)
        return torch.cat([sl[a:b] for a, b in _runs(rows)])

    def col_indices(self, name: str, cols: list[int], shape: tuple[int, ...]) -> Tensor:
        """Columns `cols` of a 2-D weight, in that order, read as maximal contiguous runs."""
        sl = self._slice(name, shape)
        return torch.cat([sl[:, a:b] for a, b in _runs(cols)], dim=1)

    def has(self, name: str) -> bool:
        """Whether the checkpoint holds `name` (with or without the `model.` prefix)."""
        return name in self._files or "model." + name in self._files

    def part(self, name: str, shape: tuple[int, ...], index: tuple[slice, ...]) -> Tensor:
        """t[index] of a tensor of any rank (e.g. a block of experts [e0:e1, f0:f1, :])."""
        return self._slice(name, shape)[index]

    def place(self, t: Tensor) -> Tensor:
        return t.to(device=self.device, dtype=self.dtype).contiguous()


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """[start, stop) of each maximal run of consecutive indices, in order."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def resolve_checkpoint(ctx: RankContext, weights: str | None) -> tuple[str, Callable[[], None]]:
    """The checkpoint directory to read, and a cleanup to call when the run ends.

    Given `weights`, that directory. Otherwise a seeded random Hugging Face model written with
    save_pretrained: the first process of every node writes its own copy (nodes need not share a
    filesystem; the seed makes the copies equal) and the ranks of that node read it.
    """
    if weights is not None:
        if not Path(weights).is_dir():
            raise FileNotFoundError(f"--weights {weights!r} is not a directory")
        return weights, lambda: None
    from planc.backends.torch import reference

    made = None
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        made = tempfile.mkdtemp(prefix="planc-weights-")
        reference.save_random_checkpoint(ctx.cfg, made)
    node = os.environ.get("GROUP_RANK", "0")
    entries: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(entries, (node, made))
    path = next(p for n, p in entries if n == node and p is not None)

    def cleanup() -> None:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)

    return path, cleanup
