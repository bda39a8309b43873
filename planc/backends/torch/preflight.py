"""Pre-flight: what `planc run` checks before any rank starts.

1. `--weights DIR` is a safetensors checkpoint: pickled weights (`*.bin`, `*.pt`) are refused,
   since loading a pickle runs code; an index's shard files stay inside the directory.
2. Its config.json describes the plan's model: every field that changes the numbers
   (dimensions, vocabulary, every ModelFeatures field), read as `model m from hf "DIR"` reads it.
3. Its tensors are the ones the plan's shards read, with the shapes they slice: names and shapes
   come from the safetensors headers only (8-byte length + JSON), never the tensor data.
4. The plan's predicted peak fits the device it will run on: on cuda, each rank's allocator
   peak within the memory a fresh process can get on its GPU (asked in a short-lived child, so
   the launcher itself never holds a CUDA context, which would cost every run ~0.5 GB); on cpu,
   the machine's available RAM (/proc/meminfo) for all of this node's ranks.

Each mismatch is a diagnostic naming both values and the fix; `planc run` exits 1 and launches
nothing.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from planc.compiler.ir import ranks_of
from planc.compiler.lower import lower
from planc.compiler.resolve import resolve
from planc.compiler.spec import ModelSpec, PlanSpec
from planc.compiler.units import human_bytes
from planc.diagnostics import Diagnostics, Related, Span
from planc.grammar import ast
from planc.models.tensors import IGNORED_SUFFIXES, checkpoint_tensors

MAX_HEADER_BYTES = 100 << 20  # a 1,000-layer MoE header is a few MB; more is not a header
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
SAFE_DTYPES = {"F32": "fp32", "BF16": "bf16", "F16": "fp16"}
PLAN_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def check(plan: PlanSpec, *, weights: str | None, device: str, run_dtype: str, nproc: int,
          node_rank: int, reference: bool, diags: Diagnostics,
          sources: dict[str, str]) -> None:
    """Every pre-flight check of one `planc run`; problems go to `diags`."""
    if weights is not None:
        directory = checkpoint_dir(weights, diags)
        if directory is not None:
            ckpt = _checkpoint_model(directory, weights, diags, sources)
            if ckpt is not None:  # the hint's path is as a plan beside plan.file would write it
                compare_models(plan.model, ckpt, os.path.relpath(directory, Path(plan.file).parent),
                               diags)
            if not diags.has_errors:
                check_tensors(plan.model, directory, weights, diags, sources)
    if not diags.has_errors:
        check_memory(plan, device, run_dtype, nproc, node_rank, reference, diags)


# ---------------------------------------------------------------------------------------------
# The checkpoint directory and its config


def checkpoint_dir(weights: str, diags: Diagnostics) -> Path | None:
    """The checkpoint directory `weights` names, or None with R010 / R011 in diags."""
    d = Path(weights)
    if not d.is_dir():
        diags.error("R010", f"--weights {weights!r} is not a directory", None,
                    "give a Hugging Face checkpoint directory (config.json + *.safetensors)")
        return None
    if (d / "model.safetensors.index.json").is_file() or any(d.glob("*.safetensors")):
        return d
    pickled = sorted(p.name for pattern in PICKLED for p in d.glob(pattern))
    if pickled:
        diags.error("R011", f"--weights {weights!r} holds only pickled weights "
                    f"({', '.join(pickled[:3])}{', ...' if len(pickled) > 3 else ''}); planc "
                    "reads safetensors only, because loading a pickle runs code", None,
                    "convert the checkpoint to safetensors where you trust it (e.g. "
                    "`model.save_pretrained(dir, safe_serialization=True)`)")
    else:
        diags.error("R010", f"--weights {weights!r} has no *.safetensors files", None,
                    "give a Hugging Face checkpoint directory (config.json + *.safetensors)")
    return None


def _checkpoint_model(directory: Path, weights: str, diags: Diagnostics,
                      sources: dict[str, str]) -> ModelSpec | None:
    """The checkpoint's config.json as a model, read exactly as `from hf` reads it."""
    if not (directory / "config.json").is_file():
        diags.error("R010", f"--weights {weights!r} has no config.json", None,
                    "a Hugging Face checkpoint directory holds config.json beside its weights")
        return None
    where = Span.point(str(directory / "config.json"), 1, 1)
    block = ast.Block("model", ast.Ident("checkpoint", where), None, (), where,
                      ast.Source(ast.Ident("hf", where), ".", where, where))
    local = Diagnostics()
    spec = resolve(ast.PlanFile(str(directory / "plan"), (block,)), local)
    diags.extend(d for d in local.items if d.code != "W005")  # no plan: by construction
    sources.update(spec.sources)
    return spec.models.get("checkpoint")


def block_values(m: ModelSpec) -> dict[str, Any]:
    """Model-block key -> value for every field of a model that changes its numbers."""
    f = m.features
    return {"family": f.family, "arch": m.arch, "layers": m.layers, "hidden": m.hidden,
            "heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim, "ffn": m.ffn,
            "vocab": m.vocab, "experts": m.experts, "top_k": m.top_k,
            "rope_theta": f.rope_theta, "rope_type": dict(f.rope_scaling) or "default",
            "norm_eps": f.norm_eps, "qkv_bias": f.qkv_bias, "qk_norm": f.qk_norm,
            "tie_embeddings": f.tie_embeddings, "norm_topk": f.norm_topk,
            "sliding_window": f.sliding_window}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_shown(v)}" for k, v in sorted(value.items()))
    return "none" if value is None else str(value)


def compare_models(plan_model: ModelSpec, ckpt: ModelSpec, weights: str,
                   diags: Diagnostics) -> None:
    want, have = block_values(plan_model), block_values(ckpt)
    if plan_model.vocab is None:  # the program feeds inputs_embeds: no table is read
        for key in ("vocab", "tie_embeddings"):
            want.pop(key), have.pop(key)
    if not plan_model.experts or not ckpt.experts:  # a dense model's router settings are
        for key in ("top_k", "norm_topk"):           # unused defaults: `experts` says it all
            want.pop(key), have.pop(key)
    if have["arch"] != want["arch"]:  # the family follows from the arch: one error, not two
        want.pop("family", None), have.pop("family", None)
    name = plan_model.name
    for key, value in want.items():
        if have[key] == value:
            continue
        at = ckpt.spans.get(key)
        plan_at = plan_model.spans.get(key)
        related: tuple[Related, ...]
        if plan_at is not None:
            related = (Related(plan_at, f"the plan's {key} is set here"),)
        elif plan_model.span is not None:
            related = (Related(plan_model.span, f"model {name!r} is declared here"),)
        else:
            related = ()
        if key == "experts" and not have[key]:  # the language has no `experts 0`
            fix = f"remove `experts` and `top_k` from model {name} (the checkpoint is dense)"
        else:
            line = (f"`{key} {_shown(have[key])}`" if key not in ("rope_type", "arch") else
                    f"the checkpoint's {key}")
            fix = f"give model {name} {line}"
        diags.error("R012", f"the checkpoint's {key} is {_shown(have[key])}, model {name!r} in the "
                    f"plan has {_shown(value)}", at, f"{fix}, or declare it "
                    f'`model {name} from hf "{weights}"` so the two agree by construction',
                    related)


# ---------------------------------------------------------------------------------------------
# Tensors


def _header(file: Path, diags: Diagnostics) -> dict[str, Any] | None:
    """A safetensors file's header (name -> dtype, shape, offsets), read without the data."""
    try:
        with file.open("rb") as fh:
            raw = fh.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            size = file.stat().st_size
            if n <= 0 or n > MAX_HEADER_BYTES or 8 + n > size:
                diags.error("R015", f"{file} is not a safetensors file (header length {n}, file "
                            f"size {size:,} bytes)", None, "re-save the checkpoint with "
                            "save_pretrained")
                return None
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        diags.error("R015", f"cannot read the safetensors header of {file}: {e}", None,
                    "re-save the checkpoint with save_pretrained")
        return None
    if not isinstance(header, dict):
        diags.error("R015", f"{file}: the safetensors header is not a JSON object", None)
        return None
    header.pop("__metadata__", None)
    return header


def _index(directory: Path, weights: str, diags: Diagnostics, sources: dict[str, str]
           ) -> list[Path] | None:
    """The safetensors files of a checkpoint: its index's shards, or every *.safetensors."""
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return sorted(directory.glob("*.safetensors"))
    text = index.read_text(encoding="utf-8", errors="replace")
    sources[str(index)] = text  # so a diagnostic located in it shows the line
    try:
        weight_map = json.loads(text).get("weight_map")
    except json.JSONDecodeError as e:
        diags.error("R015", f"{index.name} is not valid JSON: {e.msg}",
                    Span.point(str(index), e.lineno, e.colno), "re-save the checkpoint")
        return None
    except AttributeError:
        weight_map = None
    if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()):
        diags.error("R015", f"{index.name} has no `weight_map` of tensor name -> file",
                    Span.point(str(index), 1, 1), "re-save the checkpoint")
        return None
    files = []
    for name in sorted(set(weight_map.values())):
        path = directory / name
        if Path(name).name != name or not path.is_file():  # no ../, no absolute paths
            diags.error("R015", f"{index.name} names shard {name!r}, which is not a file in "
                        f"--weights {weights!r}", Span.point(str(index), 1, 1),
                        "a checkpoint's shards sit beside its index")
            return None
        files.append(path)
    return files


def check_tensors(m: ModelSpec, directory: Path, weights: str, diags: Diagnostics,
                  sources: dict[str, str] | None = None) -> None:
    files = _index(directory, weights, diags, {} if sources is None else sources)
    if files is None:
        return
    found: dict[str, tuple[str, tuple[int, ...], Path]] = {}  # bare name -> (name, shape, file)
    for f in files:
        header = _header(f, diags)
        if header is None:
            return
        for name, info in header.items():
            shape = tuple(info.get("shape", ())) if isinstance(info, dict) else ()
            dtype = info.get("dtype") if isinstance(info, dict) else None
            if dtype not in SAFE_DTYPES:
                diags.error("R013", f"tensor {name!r} in {f.name} has dtype {dtype}; planc "
                            f"runs {', '.join(SAFE_DTYPES)} weights", None,
                            "use an unquantized bf16, fp16 or fp32 checkpoint")
                return
            found[name.removeprefix("model.")] = (name, shape, f)
    full = {k.removeprefix("model."): k for k in checkpoint_tensors(m)}
    want = {k.removeprefix("model."): v for k, v in checkpoint_tensors(m).items()}
    if m.vocab is None:  # layers only: the program feeds inputs_embeds
        found = {k: v for k, v in found.items() if k not in ("embed_tokens.weight",
                                                             "lm_head.weight")}
    missing = [full[k] for k in want if k not in found]
    extra = [found[k][0] for k in found if k not in want and not k.endswith(IGNORED_SUFFIXES)]
    wrong = [(k, found[k], s) for k, s in want.items() if k in found and found[k][1] != s]
    where = f"--weights {weights!r}"

    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3:,} more" if len(names) > 3 else "")

    if missing:
        tied = "lm_head.weight" in missing
        diags.error("R013", f"{where} lacks {len(missing):,} tensor(s) model {m.name!r} reads: "
                    f"{some(missing)}", None,
                    "the checkpoint ties lm_head to the embeddings: set `tie_embeddings true`"
                    if tied and len(missing) == 1 else
                    "the checkpoint is of another model, or incomplete (a missing shard?)")
    if extra:
        diags.error("R013", f"{where} holds {len(extra):,} tensor(s) model {m.name!r} does not "
                    f"read: {some(extra)}", None, "planc would drop them and compute another "
                    "model; describe the checkpoint's model (`model m from hf \"DIR\"`)")
    for k, (name, shape, f), s in wrong[:3]:
        diags.error("R013", f"tensor {name!r} in {f.name} has shape {list(shape)}, model "
                    f"{m.name!r} needs {list(s)}", None, "the checkpoint and the plan's model "
                    "dimensions disagree")
    if len(wrong) > 3:
        diags.error("R013", f"{len(wrong) - 3:,} more tensors have other shapes than model "
                    f"{m.name!r} needs", None)


# ---------------------------------------------------------------------------------------------
# Memory


def mem_available() -> int | None:
    """The kernel's estimate of memory available to new processes (bytes), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_GPU_MEMORY = (
    "import json, sys, torch\n"
    "print(json.dumps([torch.cuda.mem_get_info(i) for i in range(int(sys.argv[1]))]))\n"
)


def gpu_memory(n: int) -> list[tuple[int, int]]:
    """(free, total) bytes of GPUs 0..n-1 as a new process with its own CUDA context sees them,
    asked in a child process that exits before any rank starts."""
    out = subprocess.run([sys.executable, "-c", _GPU_MEMORY, str(n)], capture_output=True,
                         text=True, timeout=300, check=True)
    return [(int(f), int(t)) for f, t in json.loads(out.stdout.strip().splitlines()[-1])]


def rank_peaks(plan: PlanSpec, run_dtype: str) -> tuple[list[int], list[int], list[str]]:
    """Predicted peak and reserve per rank at the dtype the run uses, and each rank's class."""
    dtype = PLAN_DTYPE.get(run_dtype, plan.model.dtype)
    graph = lower(replace(plan, model=replace(plan.model, dtype=dtype)))
    peaks, reserves, names = [0] * graph.mesh.size, [0] * graph.mesh.size, [""] * graph.mesh.size
    for cls in graph.classes:
        for r in ranks_of(graph.mesh, cls):
            peaks[r], reserves[r], names[r] = cls.memory["peak"], cls.memory["reserve"], cls.id
    return peaks, reserves, names


def check_memory(plan: PlanSpec, device: str, run_dtype: str, nproc: int, node_rank: int,
                 reference: bool, diags: Diagnostics) -> None:
    peaks, reserves, names = rank_peaks(plan, run_dtype)
    local = range(node_rank * nproc, (node_rank + 1) * nproc)
    fix = ("add devices to the mesh, shrink the workload (batch, seq), or run on a device "
           "with more memory")
    if device == "cuda":
        # A necessary condition, not the sufficient one (that is the verifier's capacity check
        # with a calibrated device): the child's free memory is after its own bare CUDA
        # context, which a rank has too, so the rank's allocator peak must fit in it; the rest
        # of the reserve (libraries, NCCL) is the calibrated device's business.
        for i, (r, (free, total)) in enumerate(zip(local, gpu_memory(len(local)))):
            need = peaks[r] - reserves[r]
            if need > free:
                diags.error("R014", f"rank {r} (cuda:{i}) needs {human_bytes(need)} in torch's "
                            f"allocator (the predicted peak of {names[r]} at {run_dtype}, "
                            f"without the runtime reserve), and a new process gets "
                            f"{human_bytes(free)} of the GPU's {human_bytes(total)}",
                            plan.span, fix)
        return
    # On the CPU every rank of the node shares the RAM; there is no CUDA context to reserve.
    need = sum(peaks[r] - reserves[r] for r in local)
    what = f"{nproc} cpu rank(s) at {run_dtype}"
    if reference:  # rank 0 also holds the single-device reference model
        from planc.cost.claims import total_params

        ref = total_params(plan) * {"float32": 4}.get(run_dtype, 2)
        need += ref
        what += f", plus {human_bytes(ref)} for the reference model"
    available = mem_available()
    if available is not None and need > available:
        diags.error("R014", f"plan {plan.name!r} needs {human_bytes(need)} of memory ({what}), "
                    f"and this machine has {human_bytes(available)} available (MemAvailable in "
                    "/proc/meminfo)", plan.span, fix)
