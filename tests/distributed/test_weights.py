"""ShardReader reads exactly the requested rows / columns of Hugging Face tensors, with or without
the `model.` prefix, and names the tensor when a checkpoint does not fit the plan."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from planc.backends.torch.weights import ShardReader


@pytest.fixture
def checkpoint(tmp_path):
    w = torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6)
    save_file({"model.layers.0.mlp.up_proj.weight": w, "norm.weight": torch.ones(6)},
              str(tmp_path / "model.safetensors"))  # fmt: skip
    return tmp_path, w


def test_rows_and_columns_are_the_requested_slices_in_the_run_dtype(checkpoint):
    path, w = checkpoint
    reader = ShardReader(path, torch.device("cpu"), torch.bfloat16)
    try:
        name = "layers.0.mlp.up_proj.weight"  # stored as model.layers.0...
        assert torch.equal(reader.rows(name, range(2, 4), (8, 6)), w[2:4])
        assert torch.equal(reader.cols(name, range(3, 6), (8, 6)), w[:, 3:6])
        placed = reader.place(reader.cols(name, range(3, 6), (8, 6)))
        assert placed.dtype == torch.bfloat16 and placed.is_contiguous()
        assert torch.equal(reader.full("norm.weight", (6,)), torch.ones(6))
    finally:
        reader.close()


def test_a_checkpoint_of_other_dims_is_refused_with_both_shapes(checkpoint):
    path, _ = checkpoint
    reader = ShardReader(path, torch.device("cpu"), torch.float32)
    try:
        with pytest.raises(
            ValueError, match=r"has shape \(8, 6\), the plan's model needs \(16, 6\)"
        ):
            reader.rows("layers.0.mlp.up_proj.weight", range(4), (16, 6))
        with pytest.raises(KeyError, match="layers.1.mlp.up_proj.weight"):
            reader.full("layers.1.mlp.up_proj.weight", (8, 6))
    finally:
        reader.close()
