"""emit_program: a RunConfig -> one readable, standalone torchrun program (Python source).

The program embeds the config as `CONFIG = <repr literal>` and a short straight-line main():
parse --device / --weights / --out, start the process group and mesh, load this rank's shards,
run, write metrics, destroy the process group (always). No user string (plan name, file name,
axis names) ever becomes code: strings appear only as repr() literals, also in comments, where
repr() escapes any newline that could end the comment. Same config, same bytes.
"""

from __future__ import annotations

import math
import pprint
from typing import Any

from planc.backends.torch.runtime.config import RunConfig
from planc.compiler.units import plural

_MAIN = """

def main() -> None:
    parser = argparse.ArgumentParser(description="Run one plan compiled by planc (torchrun).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--weights", default=None,
        help="Hugging Face safetensors checkpoint directory (default: seeded random weights)",
    )
    parser.add_argument("--out", default="metrics.json", help="metrics JSON, written by rank 0")
    args = parser.parse_args()

    cfg = RunConfig.from_dict(CONFIG)
    cleanup = None
    try:
        ctx = rank_dist.init(cfg, args.device)  # process group, DeviceMesh of the mesh above
        checkpoint, cleanup = resolve_checkpoint(ctx, args.weights)
        model = program.load(ctx, checkpoint)  # this rank's stage layers and shards only
        result = program.run(ctx, model)  # warm-up, then timed forwards over the pipeline
        program.report(ctx, model, result, checkpoint, args.out, {"plan": PLAN})
    finally:
        if cleanup is not None:
            cleanup()
        rank_dist.shutdown()


if __name__ == "__main__":
    rank_dist.run_and_leave(main)
"""

# A decode program also turns prompts into text (`planc generate`'s options): these edits of
# _MAIN read the prompts before the weights load, and run them instead of the timed random ones.
_TEXT_MAIN = (
    ("    args = parser.parse_args()\n",
     ("    textgen.add_arguments(parser)  # --prompt / --prompts, -o, sampling\n"
      "    args = parser.parse_args()\n")),
    ("        checkpoint, cleanup = resolve_checkpoint(ctx, args.weights)\n",
     ("        request = textgen.read_request(ctx, args) if textgen.requested(args) else None\n"
      "        checkpoint, cleanup = resolve_checkpoint(ctx, args.weights)\n")),
    (("        result = program.run(ctx, model)  # warm-up, then timed forwards over the pipeline\n"
      "        program.report(ctx, model, result, checkpoint, args.out, {\"plan\": PLAN})\n"),
     ("        if request is not None:  # prompts in, text out\n"
      "            textgen.run(ctx, model, request, checkpoint, args.out, args.output,\n"
      "                        {\"plan\": PLAN})\n"
      "        else:  # warm-up, then timed greedy decodes of random prompts\n"
      "            result = program.run(ctx, model)\n"
      "            program.report(ctx, model, result, checkpoint, args.out, {\"plan\": PLAN})\n")),
)

_IMPORTS = """
from __future__ import annotations

import argparse

from planc.backends.torch.runtime import dist as rank_dist
from planc.backends.torch.runtime import program
from planc.backends.torch.runtime.config import RunConfig
from planc.backends.torch.weights import resolve_checkpoint
"""


def _check_literal(value: Any, where: str) -> None:
    """repr() must read back as the same value: finite floats, plain containers only."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} = {value!r} is not finite; it cannot be written as a literal")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_literal(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_literal(v, f"{where}[{i}]")
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        raise TypeError(f"{where} has a {type(value).__name__}, not a plain literal")


def _axis_roles(cfg: RunConfig) -> list[str]:
    lines = []
    for axis, size in cfg.mesh:
        dims = [d for d, axes in sorted(cfg.splits.items()) if axis in axes]
        role = ", ".join(dims) if dims else "nothing (replicas run the same work)"
        lines.append(f"#   axis {axis!r} (size {size}) splits: {role}")
    return lines


def _header(cfg: RunConfig, plan_name: str, source_file: str) -> str:
    m = cfg.model
    mesh = " x ".join(f"{a!r}={s}" for a, s in cfg.mesh)
    mesh_line = (
        f"# mesh {mesh}: {plural(cfg.world_size, 'rank')}, rank = row-major index of the "
        "coordinates"
        " (last axis fastest)"
    )
    model_line = (
        f"# model: {m.arch}, {m.layers} layers, hidden {m.hidden}, heads {m.heads}"
        f" (kv {m.kv_heads}, head_dim {m.head_dim}), ffn {m.ffn}, vocab {m.vocab}"
    )
    input_line = (
        f"# input: batch {cfg.batch} x seq {cfg.seq}, {cfg.dtype},"
        f" {cfg.microbatches} microbatch(es), attention {cfg.attention}, causal {cfg.causal}"
    )
    lines = [
        "#!/usr/bin/env python3",
        "# Generated by planc: do not edit; change the plan and emit it again.",
        f"# plan {plan_name!r}, from {source_file!r}",
        mesh_line,
        *_axis_roles(cfg),
        model_line,
        input_line,
    ]
    if cfg.phase == "decode":
        lines.append(
            f"# decode: greedy, a prompt of {cfg.context} tokens then {cfg.generate} generated per"
            " sequence, KV cache of context + generate positions"
        )
    for i, (first, last) in enumerate(cfg.stages):
        lines.append(f"# stage {i}: layers [{first}, {last})")
    lines.append(
        f"# run: torchrun --nproc-per-node {cfg.world_size} <this file> --device cpu --out m.json"
    )
    if cfg.phase == "decode":
        lines.append(
            f"# text: torchrun --nproc-per-node {cfg.world_size} <this file> --weights DIR"
            " --prompts in.jsonl -o out.jsonl  (--help: sampling)"
        )
    return "\n".join(lines) + "\n"


def emit_program(cfg: RunConfig, *, plan_name: str, source_file: str) -> str:
    """The standalone program for `cfg` (deterministic: same config, same bytes)."""
    data = cfg.to_dict()
    _check_literal(data, "CONFIG")
    config = pprint.pformat(data, width=100, sort_dicts=True)
    body = f"\nPLAN = {plan_name!r}\nCONFIG = {config}\n"
    imports = _IMPORTS
    main = _MAIN
    if cfg.phase == "decode":  # the same main() and program (its phase is the config's), and text
        imports = imports.replace("import program\n", "import program\n"
                                  "from planc.backends.torch.runtime import textgen\n")
        for old, text in _TEXT_MAIN:
            assert old in main, old
            main = main.replace(old, text)
    return _header(cfg, plan_name, source_file) + imports + body + main
