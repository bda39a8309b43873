"""`model m from hf "ckpt"`: a checkpoint's config.json fills the model block, the block's own
lines override it, and anything planc cannot honour, or a config that is not data, is a
diagnostic located in config.json (never a traceback, never an approximation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from planc.diagnostics import Diagnostics, render
from planc.grammar.parse import parse_text
from planc.pipeline import check_paths, load

ROOT = Path(__file__).resolve().parents[2]

LLAMA31 = {  # Llama-3.1-8B's published architecture, at a tenth of its depth
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "num_hidden_layers": 4, "num_attention_heads": 32, "num_key_value_heads": 8,
    "intermediate_size": 14336, "vocab_size": 128256, "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 8192,
                                             "rope_type": "llama3"},
    "attention_bias": False, "mlp_bias": False, "hidden_act": "silu", "torch_dtype": "bfloat16",
    "tie_word_embeddings": False, "max_position_embeddings": 131072, "bos_token_id": 128000,
}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256,
        "torch_dtype": "float32"}
FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": LLAMA31,
    "mistral": {**TINY, "model_type": "mistral", "sliding_window": None, "rms_norm_eps": 1e-5},
    "qwen2": {**TINY, "model_type": "qwen2", "tie_word_embeddings": True,
              "use_sliding_window": False, "sliding_window": 32},
    "qwen3": {**TINY, "model_type": "qwen3", "head_dim": 32, "rope_parameters":
              {"rope_theta": 1000000.0, "rope_type": "default"}, "tie_word_embeddings": True},
    "mixtral": {**TINY, "model_type": "mixtral", "num_local_experts": 4,
                "num_experts_per_tok": 2, "rope_theta": 1e6},
    "qwen3_moe": {**TINY, "model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "norm_topk_prob": True,
                  "decoder_sparse_step": 1, "mlp_only_layers": []},
}
REST = """
cluster c {
  device H100 x 2
}
workload w {
  batch 2
  seq   64
}
plan p {
  model    m
  cluster  c
  workload w
  mesh     tp=2
  shard    heads, kv_heads over tp
}
"""


def checkpoint(root: Path, config: dict[str, Any] | str, name: str = "ckpt") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config, indent=2)
    (d / "config.json").write_text(text, encoding="utf-8")
    return d


def plan_file(root: Path, source: str = "ckpt", lines: str = "", rest: str = REST) -> Path:
    p = root / "m.plan"
    p.write_text(f'model m from hf "{source}" {{\n{lines}}}\n{rest}', encoding="utf-8")
    return p


def resolved(path: Path):  # type: ignore[no-untyped-def]
    diags = Diagnostics()
    spec, _ = load(path, diags)
    return spec, diags


def errors(path: Path) -> list[tuple[str, str, int, int, str]]:
    _, diags = resolved(path)
    return [(d.code, Path(d.span.file).name if d.span else "", d.span.line if d.span else 0,
             d.span.column if d.span else 0, d.message) for d in diags.sorted()
            if d.severity == "error"]


def test_a_llama31_config_fills_every_dimension_and_feature(tmp_path):
    checkpoint(tmp_path, LLAMA31)
    spec, diags = resolved(plan_file(tmp_path))
    assert not diags.has_errors, [d.message for d in diags]
    m = spec.models["m"]
    assert (m.arch, m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.ffn, m.vocab,
            m.dtype) == ("llama", 4, 4096, 32, 8, 128, 14336, 128256, "bf16")
    f = m.features
    assert (f.family, f.rope_theta, f.norm_eps, f.qkv_bias, f.qk_norm, f.tie_embeddings,
            f.sliding_window) == ("llama", 500000.0, 1e-05, False, False, False, None)
    assert dict(f.rope_scaling) == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192}
    assert m.spans["heads"].file.endswith("config.json")  # notes point at the field


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_each_family_maps_its_own_fields(tmp_path, family):
    checkpoint(tmp_path, FAMILY_CONFIGS[family])
    spec, diags = resolved(plan_file(tmp_path))
    assert not diags.has_errors, [d.message for d in diags]
    m = spec.models["m"]
    f = m.features
    assert f.family == family
    expected = {  # (arch, ffn, experts, top_k, head_dim, qkv_bias, qk_norm, tied, norm_topk)
        "llama": ("llama", 14336, 0, 0, 128, False, False, False, True),
        "mistral": ("llama", 128, 0, 0, 16, False, False, False, True),
        "qwen2": ("llama", 128, 0, 0, 16, True, False, True, True),
        "qwen3": ("llama", 128, 0, 0, 32, False, True, True, True),
        "mixtral": ("mixtral", 128, 4, 2, 16, False, False, False, True),
        "qwen3_moe": ("mixtral", 32, 8, 2, 16, False, True, False, True),
    }[family]
    assert (m.arch, m.ffn, m.experts, m.top_k, m.head_dim, f.qkv_bias, f.qk_norm,
            f.tie_embeddings, f.norm_topk) == expected
    assert f.sliding_window is None  # qwen2's window is off (use_sliding_window false)


def test_family_defaults_fill_keys_a_config_leaves_out(tmp_path):
    config = {k: v for k, v in FAMILY_CONFIGS["mixtral"].items() if k != "rope_theta"}
    checkpoint(tmp_path, {**config, "rms_norm_eps": None})
    spec, diags = resolved(plan_file(tmp_path))
    assert not diags.has_errors
    f = spec.models["m"].features
    assert (f.rope_theta, f.norm_eps) == (1e6, 1e-5)  # MixtralConfig's defaults


def test_qwen3_moe_norm_topk_prob_false_is_honoured(tmp_path):
    checkpoint(tmp_path, {**FAMILY_CONFIGS["qwen3_moe"], "norm_topk_prob": False})
    spec, _ = resolved(plan_file(tmp_path))
    assert spec.models["m"].features.norm_topk is False


def test_block_lines_override_the_config_for_what_if_checks(tmp_path):
    checkpoint(tmp_path, LLAMA31)
    p = plan_file(tmp_path, lines="  layers 80\n  norm_eps 1e-6\n  tie_embeddings true\n")
    spec, diags = resolved(p)
    assert not diags.has_errors
    m = spec.models["m"]
    assert (m.layers, m.features.norm_eps, m.features.tie_embeddings) == (80, 1e-6, True)
    assert m.hidden == 4096  # the rest still from config.json
    assert m.spans["layers"].file == str(p) and m.spans["layers"].line == 2


def test_the_path_is_relative_to_the_plan_file_and_reported_as_written(tmp_path):
    checkpoint(tmp_path / "models", LLAMA31)
    sub = tmp_path / "plans"
    sub.mkdir()
    p = plan_file(sub, "../models/ckpt/config.json")  # a config.json file, not a directory
    here = os.getcwd()
    try:
        os.chdir(ROOT)  # not the plan's directory
        spec, diags = resolved(p)
        assert not diags.has_errors and spec.models["m"].hidden == 4096
        p.write_text(p.read_text().replace("../models/ckpt", "../models/gone"))
        errs = errors(p)
    finally:
        os.chdir(here)
    assert [e[:4] for e in errs] == [("E070", "m.plan", 1, 17)]
    assert '"../models/gone/config.json"' in errs[0][4]


def test_a_missing_checkpoint_skips_the_plan_without_more_errors(tmp_path):
    result = check_paths([plan_file(tmp_path, "nowhere")])
    assert [d.code for d in result.diagnostics] == ["E070"] and not result.plans
    assert result.exit_code == 1


def test_bad_json_is_located_at_the_line_and_column_inside_config_json(tmp_path):
    text = '{\n  "model_type": "llama",\n  "hidden_size": 4096,,\n}\n'
    checkpoint(tmp_path, text)
    (code, file, line, col, msg), = errors(plan_file(tmp_path))
    assert (code, file, line, col) == ("E071", "config.json", 3, 23)
    assert "not valid JSON" in msg


@pytest.mark.parametrize("text, what", [
    ("[1, 2]", "a JSON list"),
    ('{"model_type": "llama", "hidden_size": NaN}', "NaN"),
    ("\ufeff{\"model_type\": 3}", "must be a string"),
])
def test_json_that_is_not_a_config_is_refused(tmp_path, text, what):
    checkpoint(tmp_path, text)
    errs = errors(plan_file(tmp_path))
    assert errs and errs[0][0] in ("E071", "E076") and what in errs[0][4]


def test_invalid_utf8_in_config_json_is_located(tmp_path):
    d = checkpoint(tmp_path, "{}")
    (d / "config.json").write_bytes(b'{\n  "model_type": "ll\xffama"\n}\n')
    (code, file, line, col, _), = errors(plan_file(tmp_path))
    assert (code, file, line, col) == ("E071", "config.json", 2, 20)


def test_a_missing_field_names_it_and_the_fix(tmp_path):
    checkpoint(tmp_path, {k: v for k, v in LLAMA31.items() if k != "num_attention_heads"})
    (code, file, _, _, msg), = errors(plan_file(tmp_path))
    assert (code, file) == ("E075", "config.json")
    assert "num_attention_heads" in msg


def test_a_missing_field_can_be_given_in_the_block(tmp_path):
    checkpoint(tmp_path, {k: v for k, v in LLAMA31.items() if k != "vocab_size"})
    assert errors(plan_file(tmp_path))[0][0] == "E075"


def test_a_field_of_the_wrong_type_is_located_at_its_key(tmp_path):
    checkpoint(tmp_path, {**LLAMA31, "hidden_size": "4096"})
    text = (tmp_path / "ckpt" / "config.json").read_text()
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if '"hidden_size"' in ln)
    (code, file, got_line, col, msg), = errors(plan_file(tmp_path))
    assert (code, file, got_line, col) == ("E076", "config.json", line, 3)
    assert '"4096"' in msg and "whole number" in msg


def test_a_boolean_is_not_a_count(tmp_path):
    checkpoint(tmp_path, {**LLAMA31, "num_hidden_layers": True})
    assert errors(plan_file(tmp_path))[0][0] == "E076"


def test_values_from_config_json_are_checked_like_the_blocks_own(tmp_path):
    checkpoint(tmp_path, {**LLAMA31, "num_key_value_heads": 5})
    (code, file, *_), = errors(plan_file(tmp_path))
    assert (code, file) == ("E018", "config.json")  # 32 heads, 5 kv heads: at the config line


def test_custom_code_is_refused(tmp_path):
    checkpoint(tmp_path, {**LLAMA31, "auto_map": {"AutoModelForCausalLM": "modeling_x.Model"}})
    (code, file, _, _, msg), = errors(plan_file(tmp_path))
    assert (code, file) == ("E072", "config.json") and "auto_map" in msg


def test_an_unknown_model_type_names_the_value_and_the_families(tmp_path):
    checkpoint(tmp_path, {**LLAMA31, "model_type": "gemma2"})
    (code, _, _, _, msg), = errors(plan_file(tmp_path))
    assert code == "E073" and "'gemma2'" in msg
    _, diags = resolved(plan_file(tmp_path))
    assert "qwen3_moe" in diags.items[0].hint


@pytest.mark.parametrize("change, field", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic"),
    ({"kv_lora_rank": 512}, "kv_lora_rank"),
    ({"n_shared_experts": 2}, "n_shared_experts"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ({"torch_dtype": "float8_e4m3fn"}, "float8_e4m3fn"),
    ({"layer_types": ["full_attention", "chunked_attention"]}, "chunked_attention"),
])
def test_an_unsupported_feature_names_the_field_and_value(tmp_path, change, field):
    checkpoint(tmp_path, {**LLAMA31, **change})
    errs = errors(plan_file(tmp_path))
    assert [e[:2] for e in errs] == [("E074", "config.json")]
    assert field in errs[0][4]


@pytest.mark.parametrize("change", [{"decoder_sparse_step": 2}, {"mlp_only_layers": [0]}])
def test_qwen3_moe_with_dense_layers_is_refused(tmp_path, change):
    checkpoint(tmp_path, {**FAMILY_CONFIGS["qwen3_moe"], **change})
    errs = errors(plan_file(tmp_path))
    assert [e[0] for e in errs] == ["E074"] and next(iter(change)) in errs[0][4]


def test_llama3_rope_scaling_needs_its_parameters(tmp_path):
    scaling = {k: v for k, v in LLAMA31["rope_scaling"].items() if k != "factor"}
    checkpoint(tmp_path, {**LLAMA31, "rope_scaling": scaling})
    errs = errors(plan_file(tmp_path))
    assert [e[0] for e in errs] == ["E075"] and "factor" in errs[0][4]


def test_a_sliding_window_shorter_than_the_context_is_refused(tmp_path):
    checkpoint(tmp_path, {**FAMILY_CONFIGS["mistral"], "sliding_window": 32})
    (code, file, line, _, msg), = errors(plan_file(tmp_path))  # the workload's seq is 64
    assert (code, file, line) == ("E077", "m.plan", 14) and "32" in msg and "64" in msg
    checkpoint(tmp_path, {**FAMILY_CONFIGS["mistral"], "sliding_window": 64})
    assert errors(plan_file(tmp_path)) == []


def test_a_key_planc_does_not_read_is_a_warning(tmp_path):
    checkpoint(tmp_path, {**LLAMA31, "logit_scale": 0.5})
    _, diags = resolved(plan_file(tmp_path))
    assert not diags.has_errors
    assert [(d.code, "logit_scale" in d.message) for d in diags] == [("W070", True)]


def test_a_diagnostic_in_config_json_shows_its_line(tmp_path):
    checkpoint(tmp_path, {**LLAMA31, "hidden_act": "gelu"})
    result = check_paths([plan_file(tmp_path)])
    shown = render(result.diagnostics[0], result.sources)
    assert '"hidden_act": "gelu"' in shown and "^" in shown


def test_a_source_other_than_hf_or_outside_a_model_is_refused(tmp_path):
    checkpoint(tmp_path, LLAMA31)
    p = plan_file(tmp_path)
    p.write_text(p.read_text().replace("from hf", "from gguf"))
    assert [e[:4] for e in errors(p)] == [("E070", "m.plan", 1, 9)]


def test_rope_parameters_without_rope_type_llama3_are_refused(tmp_path):
    from tests.helpers import resolve_text

    _, diags = resolve_text("model m {\n  layers 2\n  hidden 64\n  heads 4\n  ffn 128\n"
                            "  rope_factor 8\n}\n")
    assert [(d.code, d.span.line) for d in diags if d.code != "W005"] == [("E078", 6)]
    _, diags = resolve_text("model m {\n  layers 2\n  hidden 64\n  heads 4\n  ffn 128\n"
                            "  rope_type llama3\n  rope_factor 8\n}\n")
    assert sorted(d.code for d in diags if d.code != "W005") == ["E078"] * 3  # low, high, orig.


def test_fmt_keeps_the_source():
    from planc.fmt import format_text

    text = 'model m from hf "ck pt/x" {\n  layers 2\n}\n'
    assert format_text(text, "x.plan") == text
    assert parse_text(text).blocks[0].source.path == "ck pt/x"


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_import_prints_a_block_that_checks_to_the_same_model(tmp_path, family):
    checkpoint(tmp_path, FAMILY_CONFIGS[family])
    p = subprocess.run([sys.executable, "-m", "planc", "import", str(tmp_path / "ckpt"),
                        "--name", "m"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert "from hf" not in p.stdout and "model m {" in p.stdout
    from planc.fmt import format_text

    assert format_text(p.stdout) == p.stdout  # already in `planc fmt`'s layout
    explicit = tmp_path / "explicit.plan"
    explicit.write_text(p.stdout + REST)
    imported, d1 = resolved(explicit)
    from_hf, d2 = resolved(plan_file(tmp_path))
    assert not d1.has_errors and not d2.has_errors
    assert imported.models["m"] == from_hf.models["m"]  # every field but the spans
    assert repr(imported.models["m"]) == repr(from_hf.models["m"])  # same types (8 vs 8.0)


def test_import_of_a_bad_checkpoint_is_a_diagnostic_not_a_traceback(tmp_path):
    checkpoint(tmp_path, '{"model_type": "llama",}')
    p = subprocess.run([sys.executable, "-m", "planc", "import", str(tmp_path / "ckpt")],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)
    assert p.returncode == 1 and "error[E071]" in p.stderr and "Traceback" not in p.stderr
    assert p.stdout == ""


def test_models_md_lists_every_family_and_its_example_resolves():
    import re

    from planc.compiler.resolve import resolve
    from planc.grammar import ast
    from planc.models.hf_config import FAMILIES

    text = (ROOT / "docs" / "models.md").read_text()
    for family in FAMILIES:
        assert f"| `{family}`" in text, family
    (example,) = re.findall(r"```plan\n(.*?)```", text, re.DOTALL)
    tree = parse_text(example, "models.md")
    diags = Diagnostics()
    spec = resolve(ast.PlanFile(str(ROOT / "docs" / "models.md"), tree.blocks), diags)
    assert not diags.has_errors, [d.message for d in diags]
    assert spec.models["llama3_70b"].layers == 40
    assert spec.models["llama3_70b"].hidden == 8192


def test_a_huge_wrong_value_is_cut_short_in_the_message(tmp_path):
    checkpoint(tmp_path, {**LLAMA31, "hidden_size": {"nested": list(range(1000))}})
    (code, _, _, _, msg), = errors(plan_file(tmp_path))
    assert code == "E076" and len(msg) < 200 and "..." in msg


def test_a_workload_past_the_trained_length_is_a_warning_at_the_workload(tmp_path):
    checkpoint(tmp_path, {**FAMILY_CONFIGS["mistral"], "max_position_embeddings": 32})
    spec, diags = resolved(plan_file(tmp_path))  # the workload's seq is 64
    assert not diags.has_errors and spec.plans
    (w,) = [d for d in diags if d.code == "W071"]
    assert (w.span.file, w.span.line) == (str(tmp_path / "m.plan"), 14)
    assert "64" in w.message and "32" in w.message
    assert w.related[0].span.file.endswith("config.json")
    checkpoint(tmp_path, {**FAMILY_CONFIGS["mistral"], "max_position_embeddings": 64})
    assert not [d for d in resolved(plan_file(tmp_path))[1] if d.code == "W071"]


PUBLISHED = ROOT / "tests" / "unit" / "data" / "hf_configs"  # shaped as the hub's config.json


@pytest.mark.parametrize("name, expected", [
    # (layers, hidden, heads, kv_heads, head_dim, ffn, vocab, experts, top_k, tied, theta)
    ("llama3.2_1b_instruct", (16, 2048, 32, 8, 64, 8192, 128256, 0, 0, True, 500000.0)),
    ("mistral_7b_v0.1", (32, 4096, 32, 8, 128, 14336, 32000, 0, 0, False, 10000.0)),
    ("qwen2.5_7b_instruct", (28, 3584, 28, 4, 128, 18944, 152064, 0, 0, False, 1e6)),
    ("qwen3_8b", (36, 4096, 32, 8, 128, 12288, 151936, 0, 0, False, 1e6)),
    ("mixtral_8x7b_v0.1", (32, 4096, 32, 8, 128, 14336, 32000, 8, 2, False, 1e6)),
    ("qwen3_30b_a3b", (48, 2048, 32, 4, 128, 768, 151936, 128, 8, False, 1e6)),
])
def test_published_configs_read_without_a_diagnostic(tmp_path, name, expected):
    p = plan_file(tmp_path, str(PUBLISHED / f"{name}.json"))  # an absolute path is fine too
    spec, diags = resolved(p)
    assert not diags.items, [d.message for d in diags]  # not even an unread-field warning
    m = spec.models["m"]
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.ffn, m.vocab, m.experts,
            m.top_k, m.features.tie_embeddings, m.features.rope_theta) == expected


def test_mistral_7b_v01_window_refuses_a_context_past_4096(tmp_path):
    rest = REST.replace("seq   64", "seq   8192")
    errs = errors(plan_file(tmp_path, str(PUBLISHED / "mistral_7b_v0.1.json"), rest=rest))
    assert [e[0] for e in errs] == ["E077"] and "4,096" in errs[0][4]
