"""Every supported model family equals its own Hugging Face class, prefill and decode, under one
device, TP 2, PP 2 (and EP 2 for MoE), on tiny random checkpoints made with the family's own
transformers config class (no hub) and its real features on:

  llama (Llama-3): llama3 rope scaling, rope theta 500000, tied embeddings;
  qwen2: q/k/v biases, theta 1e6, norm eps 1e-6; fp16 checkpoint, run in float32;
  qwen3: q/k RMSNorm, tied embeddings, head_dim independent of hidden / heads; also split
         heads x head_dim (the q/k norm's sum of squares all-reduced over the head_dim group);
  mistral: GQA; a bf16 checkpoint in several safetensors shards;
  mixtral: 4 experts, top-2 (block_sparse_moe.* names as save_pretrained writes them, and a
           checkpoint of the fused mlp.experts.gate_up_proj layout transformers 5 holds);
  qwen3_moe: q/k norm, norm_topk_prob false (mlp.experts.{e}.gate_proj names);
and Qwen3 prefills in bfloat16 and float16 (within their tolerance of the float32 reference).

save_pretrained writes each checkpoint in the test process, sharded (max_shard_size) for some;
one spawned gloo world of 2 ranks then runs every case in turn (program.load / run / report, the
functions the emitted program calls, one mesh per case), so the processes and imports are paid
once. Rank 0's report compares the gathered output with AutoModel / AutoModelForCausalLM loaded
from the checkpoint's config.json. Cases whose plan disagrees with its checkpoint (a plan that
calls a qwen2 checkpoint plain llama, so drops its biases; a sliding window from layer 1 on that
the plan does not know; a wrong rope theta in decode) must be reported as differing, with the
place: sequence, position and first layer, or the first differing token. The emitted program and
`planc run` on a plan whose rope_theta disagrees with the checkpoint's config.json exit 1 and
say where the outputs first differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from planc.backends.torch.runtime.config import ModelDims, RunConfig
from planc.models.features import ModelFeatures

pytestmark = pytest.mark.distributed

LLAMA3_ROPE = (("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
               ("original_max_position_embeddings", 8), ("rope_type", "llama3"))
DENSE = {"arch": "llama", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "head_dim": 8,
         "ffn": 48, "vocab": 96}
MOE = {**DENSE, "arch": "mixtral", "ffn": 32, "experts": 4, "top_k": 2}
# family -> (model dims, features, checkpoint dtype, max_shard_size or None)
FAMILIES: dict[str, tuple[dict[str, Any], ModelFeatures, torch.dtype, str | None]] = {
    "llama": (DENSE, ModelFeatures("llama", 500000.0, LLAMA3_ROPE, tie_embeddings=True),
              torch.float32, None),
    "qwen2": (DENSE, ModelFeatures("qwen2", 1e6, norm_eps=1e-6, qkv_bias=True),
              torch.float16, "12KB"),
    "qwen3": ({**DENSE, "head_dim": 16}, ModelFeatures("qwen3", 1e6, norm_eps=1e-6,
              qk_norm=True, tie_embeddings=True), torch.float32, None),
    "mistral": ({**DENSE, "kv_heads": 1}, ModelFeatures("mistral", 1e6), torch.bfloat16,
                "16KB"),
    "mixtral": (MOE, ModelFeatures("mixtral", 1e6), torch.float32, None),
    "qwen3_moe": (MOE, ModelFeatures("qwen3_moe", 1e6, norm_eps=1e-6, qk_norm=True,
                  norm_topk=False), torch.float32, "24KB"),
}
TP = {"heads": ("tp",), "kv_heads": ("tp",), "ffn": ("tp",)}
Mesh = tuple[tuple[str, int], ...]
MESHES: dict[str, tuple[Mesh, dict[str, tuple[str, ...]], dict[str, Any]]] = {
    "single": ((("r", 2),), {}, {}),  # both ranks run the whole model: one device's work
    "tp2": ((("tp", 2),), TP, {}),
    "pp2": ((("pp", 2),), {"layers": ("pp",)}, {"stages": ((0, 1), (1, 2))}),
    "ep2": ((("ep", 2),), {"experts": ("ep",), "batch": ("ep",)}, {}),
    "headdim2": ((("hd", 2),), {"head_dim": ("hd",)}, {}),
    "ring2": ((("sp", 2),), {"seq": ("sp",)}, {"attention": "ring"}),
}


def make_checkpoint(family: str, path: Path, *, fused: bool = False, **config: Any) -> None:
    """A seeded random model written by save_pretrained from the family's own config class (with
    `config` overriding its arguments); with fused, its in-memory state dict as it is
    (transformers 5's fused experts, gate_up_proj)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    dims, f, dtype, shard = FAMILIES[family]
    config_class = {
        "llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
        "mistral": "MistralConfig", "mixtral": "MixtralConfig", "qwen3_moe": "Qwen3MoeConfig",
    }[family]
    import transformers

    kwargs: dict[str, Any] = {
        "vocab_size": dims["vocab"], "hidden_size": dims["hidden"],
        "intermediate_size": dims["ffn"], "num_hidden_layers": dims["layers"],
        "num_attention_heads": dims["heads"], "num_key_value_heads": dims["kv_heads"],
        "head_dim": dims["head_dim"], "rms_norm_eps": f.norm_eps,
        "rope_parameters": {"rope_type": "default", **dict(f.rope_scaling),
                            "rope_theta": f.rope_theta},
        "tie_word_embeddings": f.tie_embeddings, "sliding_window": None,
        "initializer_range": dims["hidden"] ** -0.5,
    }
    if dims["arch"] == "mixtral":
        kwargs.update(num_local_experts=dims["experts"], num_experts_per_tok=dims["top_k"],
                      moe_intermediate_size=dims["ffn"], norm_topk_prob=f.norm_topk)
    kwargs.update(config)
    config = getattr(transformers, config_class)(**kwargs)
    torch.manual_seed(sorted(FAMILIES).index(family))
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # norms and biases are ones / zeros at init: make them visible
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    model.to(dtype)
    if fused:
        from safetensors.torch import save_file

        model.config.save_pretrained(str(path))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        assert any(k.endswith("experts.gate_up_proj") for k in state)
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    model.save_pretrained(str(path), **({"max_shard_size": shard} if shard else {}))


def run_config(family: str, mesh: str, phase: str, **model: Any) -> RunConfig:
    dims, features, _, _ = FAMILIES[family]
    axes, splits, extra = MESHES[mesh]
    m = ModelDims(**{**dims, "features": features, **model})
    run: dict[str, Any] = {"batch": 2, "seq": 8, "warmup": 0, "repeats": 1, **extra}
    if phase == "decode":
        run.update(phase="decode", context=8, generate=4)
    return RunConfig(model=m, mesh=axes, splits=splits, **run)


def cases() -> list[tuple[str, str, RunConfig]]:
    """(name, checkpoint, config) of every case: each family under each of its meshes and
    phases, a Mixtral checkpoint in transformers 5's fused expert layout, and 16-bit prefills
    (within their dtype's tolerance of the float32 reference)."""
    out = [(f"mixtral-fused/{mesh}/{phase}", "mixtral-fused", run_config("mixtral", mesh, phase))
           for mesh, phase in (("tp2", "prefill"), ("ep2", "decode"))]
    # hidden 30 over 4 heads of 8: a mistral's class allows a hidden that is no multiple of the
    # heads when head_dim is given (a llama's refuses it: E079 in planc check)
    out += [(f"mistral-hidden30/tp2/{phase}", "mistral-hidden30",
             run_config("mistral", "tp2", phase, hidden=30)) for phase in ("prefill", "decode")]
    out += [(f"qwen3/tp2/prefill-{dtype}", "qwen3",
             dataclasses.replace(run_config("qwen3", "tp2", "prefill"), dtype=dtype))
            for dtype in ("bfloat16", "float16")]
    for family, (dims, _, _, _) in FAMILIES.items():
        meshes = ["single", "tp2", "pp2"] + (["ep2"] if dims["arch"] == "mixtral" else [])
        meshes += {"llama": ["ring2"], "qwen3": ["headdim2"]}.get(family, [])
        for mesh in meshes:
            for phase in ("prefill", "decode"):
                out.append((f"{family}/{mesh}/{phase}", family, run_config(family, mesh, phase)))
    return out


# Plans that disagree with their checkpoints: the run must say so.
SLIDING = {"num_hidden_layers": 3, "use_sliding_window": True, "sliding_window": 3,
           "max_window_layers": 1}  # layers 1 and 2 see only the last 3 positions
MISMATCHES = [
    # a qwen2 checkpoint whose layers from 1 on use a sliding window the plan does not know of:
    # layer 0 agrees, layer 1 (on the second stage) is the first to differ
    ("qwen2-sliding/pp2/prefill", "qwen2-sliding", dataclasses.replace(
        run_config("qwen2", "pp2", "prefill", layers=3), stages=((0, 1), (1, 3)))),
    # the plan calls a qwen2 checkpoint plain llama: no biases in the runtime, but the reference
    # is the checkpoint's Qwen2 class, which has them
    # a plan that renormalises the top-k weights of a qwen3_moe checkpoint that does not (EP 2:
    # each rank its own sequences, gathered per layer from both)
    ("qwen3_moe-renorm/ep2/prefill", "qwen3_moe", dataclasses.replace(
        run_config("qwen3_moe", "ep2", "prefill"), model=ModelDims(**{**MOE, "features":
            dataclasses.replace(FAMILIES["qwen3_moe"][1], norm_topk=True)}))),
    ("qwen2-as-llama/pp2/prefill", "qwen2", dataclasses.replace(
        run_config("qwen2", "pp2", "prefill"),
        model=ModelDims(**{**DENSE, "features": ModelFeatures("llama", 1e6, norm_eps=1e-6)}))),
    # the plan's rope theta is not the checkpoint's (an untied model: a tied one's tiny random
    # logits favour the input token whatever the rotation)
    ("qwen2-theta/pp2/decode", "qwen2", dataclasses.replace(
        run_config("qwen2", "pp2", "decode"),
        model=ModelDims(**{**DENSE, "features": dataclasses.replace(
            FAMILIES["qwen2"][1], rope_theta=100.0)}))),
]


def _worker(rank: int, world: int, *, todo: list[tuple[str, str, RunConfig]], root: str) -> None:
    """Every (name, checkpoint directory, config) in this one process group: load, run, report
    (rank 0 compares with HF)."""
    from contextlib import closing

    from planc.backends.torch.runtime import program
    from planc.backends.torch.runtime.dist import make_context
    from planc.backends.torch.runtime.model import load_stage
    from planc.backends.torch.weights import ShardReader

    results: dict[str, Any] = {}
    for name, checkpoint, cfg in todo:
        ckpt = str(Path(root) / checkpoint)
        ctx = make_context(cfg, torch.device("cpu"))
        model = program.load(ctx, ckpt)
        result = program.run(ctx, model)
        try:
            data = program.report(ctx, model, result, ckpt, str(Path(root) / "m.json"))
        except SystemExit as e:  # rank 0 leaves this way on a mismatch: record its message
            data = json.loads((Path(root) / "m.json").read_text())
            data["exit"] = str(e)
        if rank == 0:
            results[name] = {"reference": data["reference"], "exit": data.get("exit")}
        if cfg.splits.get("layers"):  # a stage opens only the shard files holding its tensors
            with closing(ShardReader(ckpt, ctx.device, ctx.dtype)) as reader:
                load_stage(ctx, reader)
                opened = sorted(p.name for p in reader.opened_files)
            everyone: list[Any] = [None] * world
            torch.distributed.all_gather_object(everyone, opened)
            if rank == 0:
                results[name]["opened"] = everyone
    if rank == 0:
        (Path(root) / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def family_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from gloo_spawn import spawn  # tests/distributed is on sys.path (no __init__.py)

    root = tmp_path_factory.mktemp("families")
    for family in FAMILIES:
        make_checkpoint(family, root / family)
    make_checkpoint("mixtral", root / "mixtral-fused", fused=True)
    make_checkpoint("qwen2", root / "qwen2-sliding", **SLIDING)
    make_checkpoint("mistral", root / "mistral-hidden30", hidden_size=30)
    spawn(partial(_worker, todo=cases() + MISMATCHES, root=str(root)), 2, timeout=400.0)
    results = json.loads((root / "results.json").read_text())
    results["__root__"] = str(root)
    return results


@pytest.mark.parametrize("name", [name for name, _, _ in cases()])
def test_family_equals_its_hugging_face_class(family_results: dict[str, Any], name: str) -> None:
    got = family_results[name]
    assert got["exit"] is None, got
    assert got["reference"]["ok"] is True, got
    if name.endswith("prefill"):  # float32: far inside the tolerance
        assert got["reference"]["max_rel_error"] <= 1e-4, got
    elif "prefill-" in name:  # 16-bit: rounded, so not float32-close, but within its tolerance
        assert 1e-4 < got["reference"]["max_rel_error"] <= got["reference"]["tolerance"], got


@pytest.mark.parametrize(
    ("name", "layer", "position"),
    [
        ("qwen2-as-llama/pp2/prefill", 0, 0),  # the dropped biases are in every layer
        ("qwen3_moe-renorm/ep2/prefill", 0, 0),  # so is the router
        # the sliding window starts at layer 1 (on the second stage); within the window every
        # position agrees, the first to differ is the first past it
        ("qwen2-sliding/pp2/prefill", 1, SLIDING["sliding_window"]),
    ],
)
def test_a_prefill_that_differs_is_reported_at_its_first_position_and_layer(
    family_results: dict[str, Any], name: str, layer: int, position: int
) -> None:
    got = family_results[name]
    assert got["reference"]["ok"] is False
    assert got["reference"]["first_difference"] == {"sequence": 0, "position": position}
    assert got["reference"]["first_layer"] == layer
    assert "R004" in got["exit"] and f"first at sequence 0, position {position}" in got["exit"]
    assert f"first differs after layer {layer}" in got["exit"]


def test_decode_with_a_wrong_rope_theta_names_the_first_differing_token(
    family_results: dict[str, Any],
) -> None:
    got = family_results["qwen2-theta/pp2/decode"]
    assert got["reference"]["ok"] is False
    first = got["reference"]["first_difference"]
    assert first["position"] == 8 + first["generated_index"]
    assert f"generated token {first['generated_index']}" in got["exit"]


def test_sharded_checkpoint_each_stage_opens_only_its_shards(
    family_results: dict[str, Any],
) -> None:
    root = Path(family_results["__root__"])
    for family in ("qwen2", "mistral", "qwen3_moe"):
        index = json.loads((root / family / "model.safetensors.index.json").read_text())
        files = sorted(set(index["weight_map"].values()))
        assert len(files) >= 3, files
        opened = family_results[f"{family}/pp2/prefill"]["opened"]
        for stage, names in enumerate(opened):
            # exactly the files that hold this stage's layer, embedding (first) or norm (last)
            layer = f"model.layers.{stage}."
            own = "model.embed_tokens." if stage == 0 else "model.norm."
            want = {f for k, f in index["weight_map"].items() if k.startswith((layer, own))}
            assert set(names) == want, (family, stage, names, want)
        assert opened[0] != opened[1]


PLAN = """
model m {{
  family    llama
  layers    2
  hidden    32
  heads     4
  kv_heads  2
  head_dim  8
  ffn       48
  vocab     96
  dtype     fp32
  rope_theta {theta}
}}
cluster c {{
  device CPU x 2
}}
workload w {{
  batch 2
  seq   8
}}
plan p {{
  model m
  cluster c
  workload w
  mesh     tp=2
  shard    heads, kv_heads, ffn over tp
}}
"""


def theta_checkpoint(tmp_path: Path) -> Path:
    """A llama checkpoint whose config.json says rope_theta 500000."""
    from planc.backends.torch.reference import save_random_checkpoint

    ckpt = tmp_path / "ckpt"
    right = dataclasses.replace(run_config("llama", "tp2", "prefill"), model=ModelDims(
        **{**DENSE, "features": ModelFeatures("llama", 500000.0)}))
    save_random_checkpoint(right, ckpt)
    return ckpt


def test_emitted_program_exits_1_when_its_output_differs_from_the_checkpoints_class(
    tmp_path: Path,
) -> None:
    """The program of a plan that says rope_theta 10000, run (no pre-flight) on a checkpoint
    whose config.json says 500000: rank 0 writes the metrics, then exits 1 with the place; the
    launcher raises OutputDiffers carrying them."""
    from planc.backends.torch.emit import emit_program
    from planc.backends.torch.launch import OutputDiffers, run_program

    ckpt = theta_checkpoint(tmp_path)
    cfg = dataclasses.replace(run_config("llama", "tp2", "prefill"), model=ModelDims(
        **{**DENSE, "features": ModelFeatures("llama", 10000.0)}))
    prog = tmp_path / "prog.py"
    prog.write_text(emit_program(cfg, plan_name="p", source_file="p.plan"))
    with pytest.raises(OutputDiffers, match=r"first at sequence \d+, position \d+") as e:
        run_program(prog, nproc=2, device="cpu", weights=ckpt, timeout_s=120)
    assert e.value.metrics["reference"]["ok"] is False
    assert e.value.metrics["max_rel_error"] > 0.01  # five times the float32 tolerance
    assert "first differs after layer" in str(e.value)


def test_planc_run_refuses_a_checkpoint_whose_config_disagrees_before_launch(
    tmp_path: Path,
) -> None:
    """The checkpoint's config.json says rope_theta 500000 (changed after the plan was written);
    the plan says 10000: `planc run` refuses it before any rank starts (R012, pre-flight; the
    test above shows the program itself failing when run past that check). The same plan with
    the checkpoint's theta runs clean."""
    ckpt = theta_checkpoint(tmp_path)
    (tmp_path / "p.plan").write_text(PLAN.format(theta=10000))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "planc", "run", str(tmp_path / "p.plan"), "--weights", str(ckpt),
           "--warmup", "0", "--repeats", "1", "--timeout", "120"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=200)
    assert proc.returncode == 1, proc.stderr
    assert "error[R012]" in proc.stderr and "rope_theta" in proc.stderr, proc.stderr
    assert "running plan" not in proc.stderr, proc.stderr  # nothing launched
    (tmp_path / "p.plan").write_text(PLAN.format(theta=500000))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=200)
    assert proc.returncode == 0, proc.stderr
