"""`planc run --weights DIR` pre-flight: a checkpoint whose config or tensors disagree with the
plan, pickled weights, a malformed index, or a plan too big for the machine is refused with a
diagnostic naming both values, before any rank starts (the program is never even written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from planc.backends.torch import preflight
from planc.diagnostics import Diagnostics
from planc.pipeline import find_plan

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 128}
EXPLICIT = """model m {
  layers   2
  hidden   32
  heads    4
  kv_heads 2
  ffn      64
  vocab    128
  dtype    fp32
%s}
"""
REST = """
cluster c {
  device H100 x 1
}
workload w {
  batch 1
  seq   8
}
plan p {
  model    m
  cluster  c
  workload w
  mesh     tp=1
}
"""


def save(directory: Path, config: Any, **kwargs: Any) -> Path:
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory, **kwargs)
    return directory


def llama(tmp_path: Path, **extra: Any) -> Path:
    return save(tmp_path / "ckpt", transformers.LlamaConfig(**SMALL, **extra))


def write_plan(tmp_path: Path, model: str, rest: str = REST) -> Path:
    p = tmp_path / "p.plan"
    p.write_text(model + rest)
    return p


def explicit(tmp_path: Path, lines: str = "", rest: str = REST) -> Path:
    return write_plan(tmp_path, EXPLICIT % lines, rest)


def preflight_diags(plan_path: Path, weights: Path | None, reference: bool = False
                    ) -> list[tuple[str, str]]:
    diags = Diagnostics()
    plan, _ = find_plan(plan_path, None, diags)
    assert plan is not None, [d.message for d in diags]
    preflight.check(plan, weights=None if weights is None else str(weights), device="cpu",
                    run_dtype="float32", nproc=1, node_rank=0, reference=reference,
                    diags=diags, sources={})
    return [(d.code, d.message) for d in diags.sorted() if d.severity == "error"]


def planc_run(plan_path: Path, weights: Path, keep: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "planc", "run", str(plan_path), "--weights", str(weights),
         "--keep", str(keep), "--timeout", "60"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=False)


def test_a_matching_checkpoint_passes(tmp_path):
    ckpt = llama(tmp_path, rms_norm_eps=1e-5)
    assert preflight_diags(explicit(tmp_path), ckpt) == []
    assert preflight_diags(write_plan(tmp_path, 'model m from hf "ckpt" {}\n'), ckpt) == []


def test_wrong_rope_theta_is_refused_before_launch_naming_both_values(tmp_path):
    ckpt = llama(tmp_path, rms_norm_eps=1e-5, rope_theta=500000.0)
    keep = tmp_path / "program.py"
    p = planc_run(explicit(tmp_path, "  rope_theta 10000\n"), ckpt, keep)
    assert p.returncode == 1, p.stderr
    assert "error[R012]: the checkpoint's rope_theta is 500000, model 'm' in the plan has " \
           "10000" in p.stderr
    assert "config.json:" in p.stderr and "p.plan:9:" in p.stderr  # both places are shown
    assert "running plan" not in p.stderr and not keep.exists()  # nothing emitted or launched
    assert "Traceback" not in p.stderr


def test_wrong_norm_eps_is_refused(tmp_path):
    ckpt = llama(tmp_path)  # LlamaConfig's default eps is 1e-6; the plan's default is 1e-5
    (code, msg), = preflight_diags(explicit(tmp_path), ckpt)
    assert code == "R012" and "norm_eps is 1e-06" in msg and "has 1e-05" in msg


def test_tied_checkpoint_against_an_untied_plan_is_refused(tmp_path):
    ckpt = llama(tmp_path, rms_norm_eps=1e-5, tie_word_embeddings=True)
    (code, msg), = preflight_diags(explicit(tmp_path), ckpt)
    assert code == "R012" and "tie_embeddings is true" in msg and "has false" in msg


def test_a_dense_checkpoint_against_a_moe_plan_is_one_error_per_difference(tmp_path):
    """A Mixtral plan on a Llama checkpoint: the arch (not the family as well) and the experts,
    whose hint says to remove the MoE lines (the language has no `experts 0`), not top_k."""
    ckpt = llama(tmp_path, rms_norm_eps=1e-5)
    moe = explicit(tmp_path, "  arch     mixtral\n  experts  4\n  top_k    2\n")
    errors = preflight_diags(moe, ckpt)
    assert [m.split(" is ")[0] for _, m in errors] == [
        "the checkpoint's arch", "the checkpoint's experts"], errors
    diags = Diagnostics()
    plan, _ = find_plan(moe, None, diags)
    preflight.check(plan, weights=str(ckpt), device="cpu", run_dtype="float32", nproc=1,
                    node_rank=0, reference=False, diags=diags, sources={})
    hint = next(d.hint for d in diags if "experts is 0" in d.message)
    assert hint.startswith("remove `experts` and `top_k` from model m"), hint


def test_a_tied_checkpoint_lacks_lm_head_and_the_hint_says_so(tmp_path):
    ckpt = llama(tmp_path, rms_norm_eps=1e-5, tie_word_embeddings=True)
    diags = Diagnostics()
    plan, _ = find_plan(explicit(tmp_path), None, diags)
    preflight.check_tensors(plan.model, ckpt, "ckpt", diags)
    (d,) = diags.items
    assert d.code == "R013" and "lm_head.weight" in d.message
    assert "tie_embeddings true" in d.hint


def test_a_missing_tensor_is_refused(tmp_path):
    ckpt = llama(tmp_path, rms_norm_eps=1e-5)
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, ckpt / "model.safetensors")
    (code, msg), = preflight_diags(explicit(tmp_path), ckpt)
    assert code == "R013" and "lacks 1 tensor(s)" in msg
    assert "model.layers.1.mlp.up_proj.weight" in msg or "layers.1.mlp.up_proj.weight" in msg


def test_a_tensor_of_the_wrong_shape_is_refused(tmp_path):
    ckpt = llama(tmp_path, rms_norm_eps=1e-5)
    tensors = load_file(ckpt / "model.safetensors")
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 32)
    save_file(tensors, ckpt / "model.safetensors")
    (code, msg), = preflight_diags(explicit(tmp_path), ckpt)
    assert code == "R013" and "[8, 32]" in msg and "[16, 32]" in msg


def test_qkv_biases_the_plan_would_drop_are_refused(tmp_path):
    ckpt = save(tmp_path / "ckpt", transformers.Qwen2Config(**SMALL, rms_norm_eps=1e-5))
    errors = preflight_diags(explicit(tmp_path), ckpt)
    assert ("R012", "the checkpoint's family is qwen2, model 'm' in the plan has llama") in errors
    assert any(c == "R012" and "qkv_bias is true" in m for c, m in errors)
    diags = Diagnostics()
    plan, _ = find_plan(explicit(tmp_path), None, diags)
    preflight.check_tensors(plan.model, ckpt, "ckpt", diags)
    assert [d.code for d in diags.items] == ["R013"] and "q_proj.bias" in diags.items[0].message


def test_a_sharded_checkpoint_is_read_through_its_index(tmp_path):
    ckpt = save(tmp_path / "ckpt", transformers.LlamaConfig(**SMALL, rms_norm_eps=1e-5),
                max_shard_size="20KB")
    assert (ckpt / "model.safetensors.index.json").is_file()
    assert len(list(ckpt.glob("*.safetensors"))) > 1
    assert preflight_diags(explicit(tmp_path), ckpt) == []
    os.remove(max(ckpt.glob("*.safetensors")))
    (code, msg), = preflight_diags(explicit(tmp_path), ckpt)
    assert code == "R015" and "is not a file" in msg


@pytest.mark.parametrize("index, what", [
    ('{"weight_map": {"a": "model.safetensors",}}', "not valid JSON"),
    ('{"metadata": {}}', "no `weight_map`"),
    ('{"weight_map": {"model.norm.weight": "../outside.safetensors"}}', "not a file"),
])
def test_a_malformed_index_is_a_located_diagnostic(tmp_path, index, what):
    ckpt = llama(tmp_path, rms_norm_eps=1e-5)
    (ckpt / "model.safetensors.index.json").write_text(index)
    diags = Diagnostics()
    plan, _ = find_plan(explicit(tmp_path), None, diags)
    preflight.check_tensors(plan.model, ckpt, "ckpt", diags)
    (d,) = diags.items
    assert d.code == "R015" and what in d.message
    assert d.span is not None and d.span.file.endswith("model.safetensors.index.json")


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    ckpt = llama(tmp_path, rms_norm_eps=1e-5)
    (ckpt / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    (code, msg), = preflight_diags(explicit(tmp_path), ckpt)
    assert code == "R015" and "not a safetensors file" in msg


def test_pickled_weights_only_are_refused(tmp_path):
    ckpt = llama(tmp_path, rms_norm_eps=1e-5)
    state = load_file(ckpt / "model.safetensors")
    os.remove(ckpt / "model.safetensors")
    torch.save(state, ckpt / "pytorch_model.bin")
    keep = tmp_path / "program.py"
    p = planc_run(explicit(tmp_path), ckpt, keep)
    assert p.returncode == 1 and "error[R011]" in p.stderr and "pytorch_model.bin" in p.stderr
    assert not keep.exists() and "Traceback" not in p.stderr


def test_a_missing_weights_directory_is_refused_before_launch(tmp_path):
    (code, msg), = preflight_diags(explicit(tmp_path), tmp_path / "nowhere")
    assert code == "R010" and "nowhere" in msg


def test_a_checkpoint_asking_for_custom_code_is_refused(tmp_path):
    ckpt = llama(tmp_path, rms_norm_eps=1e-5)
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Model"}
    (ckpt / "config.json").write_text(json.dumps(config))
    (code, _), = preflight_diags(explicit(tmp_path), ckpt)
    assert code == "E072"


BIG = """
device big {
  memory    100 TB
  cache     50 MB
  compute   100 TFLOPS
  bandwidth 1 TB/s
}
cluster c {
  device big x 1
}
workload w {
  batch 4096
  seq   65536
}
plan p {
  model    m
  cluster  c
  workload w
  mesh     tp=1
}
"""


def test_a_plan_too_big_for_the_machine_is_refused(tmp_path):
    (code, msg), = preflight_diags(explicit(tmp_path, rest=BIG), None)
    assert code == "R014" and "MemAvailable" in msg
    need = float(msg.split(" needs ")[1].split(" ")[0])
    assert need > 0
    assert preflight_diags(explicit(tmp_path), None, reference=True) == []  # the small one fits


def test_the_predicted_peak_is_taken_at_the_run_dtype(tmp_path):
    diags = Diagnostics()
    plan, _ = find_plan(explicit(tmp_path).parent / "p.plan", None, diags)
    fp32, _, _ = preflight.rank_peaks(plan, "float32")
    bf16, _, _ = preflight.rank_peaks(plan, "bfloat16")
    reserve = preflight.rank_peaks(plan, "float32")[1][0]
    assert fp32[0] - reserve > bf16[0] - reserve > 0
