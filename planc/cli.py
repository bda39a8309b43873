"""The `planc` command line: check, compile, schema, emit, run, generate (prompts in, text out),
calibrate, fmt, show, graph, import (a checkpoint's model block), and parse, to inspect the AST.
Reports go to stdout (or `-o FILE`, written atomically); progress and logs to stderr, with a
spinner only on a terminal.

Exit codes: 0 all proved / success; 1 violations or input errors; 2 usage or environment errors
(bad flags, torch missing, a launch that failed); 3 something is unknown and nothing violated;
101 an internal error (a planc bug); 130 interrupted. Without --debug no Python traceback is
ever shown: every failure becomes a message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from planc import __version__
from planc.compiler.units import plural
from planc.diagnostics import Diagnostic, Diagnostics, PlancError, printable, render
from planc.io import write_atomic
from planc.output import FORMATS, usage_error

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNKNOWN, EXIT_INTERNAL, EXIT_INTERRUPT = 0, 1, 2, 3, 101, 130


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    from planc.backends.torch.prompts import add_arguments  # no torch: the options only

    p = _Parser(prog="planc", description="Compile, verify and run parallel deployment plans.")
    p.add_argument("--version", action="version", version=f"planc {__version__}")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("check", help="verify plans (files or directories)")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--plan", help="check only the plan with this name")
    c.add_argument("--format", choices=FORMATS, default="text",
                   help="text (people), json (stable contract), sarif (code scanning), "
                        "github (workflow annotations), junit (test reporters)")
    c.add_argument("-o", "--output", help="write the report here (atomically)")
    c.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour text on a terminal (auto honours NO_COLOR)")
    c.add_argument("-v", "--verbose", action="store_true", help="list every proved obligation")
    c.add_argument("--timeout-ms", type=int, default=5000, help="z3 timeout per obligation")
    c.add_argument("--rlimit", type=int, default=50_000_000, help="z3 resource limit")

    for name, what in (("compile", "write the placement graph as JSON"),
                       ("emit", "write the standalone torchrun program"),
                       ("parse", "print the AST as JSON")):
        s = sub.add_parser(name, help=what)
        s.add_argument("file")
        s.add_argument("--plan", help="the plan to use when the file has several")
        s.add_argument("-o", "--output", help="output file (default: stdout)")
        if name == "emit":
            s.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                           help="override the model dtype (CPU runs use float32)")
    sub.add_parser("schema", help="print the JSON schema of the placement graph")

    v = sub.add_parser("show", help="per-device tables of a plan (and a picture with --png/--svg)")
    v.add_argument("file")
    v.add_argument("--plan", help="the plan to use when the file has several")
    v.add_argument("--png", metavar="FILE", help="also draw the plan as a PNG (matplotlib)")
    v.add_argument("--svg", metavar="FILE", help="also draw the plan as an SVG (matplotlib)")
    v.add_argument("--color", choices=("auto", "always", "never"), default="auto")

    g = sub.add_parser("graph", help="the placement graph as Graphviz DOT")
    g.add_argument("file")
    g.add_argument("--plan", help="the plan to use when the file has several")
    g.add_argument("-o", "--output", help="output file (default: stdout)")

    f = sub.add_parser("fmt", help="rewrite .plan files in the canonical form")
    f.add_argument("paths", nargs="+", metavar="PATH", help="files, directories, or - (stdin)")
    f.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 when a file would change")
    f.add_argument("--diff", action="store_true",
                   help="change nothing; print a unified diff of what would change")

    i = sub.add_parser("import", help="print the model block of a Hugging Face checkpoint")
    i.add_argument("path", metavar="PATH", help="a checkpoint directory or its config.json")
    i.add_argument("--name", help="the model's name in the block (default: from the path)")
    i.add_argument("-o", "--output", help="output file (default: stdout)")

    r = sub.add_parser("run", help="verify, emit and run a plan with torchrun")
    r.add_argument("file")
    r.add_argument("--plan")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    r.add_argument("--weights", help="a Hugging Face safetensors checkpoint directory")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.add_argument("-o", "--output", help="write the metrics JSON here")
    r.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="default: float32 on cpu, the model's dtype on cuda")
    r.add_argument("--timeout", type=float, default=600.0, help="seconds before the run is killed")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--no-reference", action="store_true",
                   help="skip the single-device Hugging Face reference comparison")
    r.add_argument("--nnodes", type=int, default=1, help="torchrun --nnodes (several hosts)")
    r.add_argument("--node-rank", type=int, default=0, help="torchrun --node-rank")
    r.add_argument("--rdzv-endpoint", help="torchrun --rdzv-endpoint HOST:PORT")
    r.add_argument("--keep", help="also write the generated program here")

    k = sub.add_parser("calibrate", help="measure this machine and write a `device` block")
    k.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    k.add_argument("--gpus", type=int, default=1,
                   help="devices to measure together (links, collective latency, NCCL memory)")
    k.add_argument("--groups", default="",
                   help="the plan's process-group sizes, e.g. 2,4: their communicators' memory "
                        "is part of the reserve")
    k.add_argument("--name", help="the device's name (default: PRESET_calibrated)")
    k.add_argument("--margin-mib", type=int,
                   help="memory kept back for kernels loaded lazily later (default 256 on cuda)")
    k.add_argument("--quick", action="store_true", help="tiny sizes (tests): rates are noise")
    k.add_argument("-o", "--output", help="write the device block here (default: stdout)")
    k.add_argument("--json", help="also write every measurement as JSON here")

    n = sub.add_parser("generate", help="turn prompts into text with a decode plan (torchrun)")
    n.add_argument("file")
    n.add_argument("--plan")
    n.add_argument("--weights", required=True,
                   help="a Hugging Face checkpoint directory with its tokenizer")
    add_arguments(n, required=True)
    n.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    n.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="default: float32 on cpu, the model's dtype on cuda")
    n.add_argument("--timeout", type=float, default=600.0, help="seconds before the run is killed")
    n.add_argument("--nnodes", type=int, default=1, help="torchrun --nnodes (several hosts)")
    n.add_argument("--node-rank", type=int, default=0, help="torchrun --node-rank")
    n.add_argument("--rdzv-endpoint", help="torchrun --rdzv-endpoint HOST:PORT")
    n.add_argument("--keep", help="also write the generated program here")
    return p


def _print_diags(diags: Sequence[Diagnostic], sources: dict[str, str]) -> None:
    for d in diags:
        print(render(d, sources), file=sys.stderr)


def _emit_out(text: str, output: str | None) -> None:
    if output:
        write_atomic(output, text)
    else:
        sys.stdout.write(text)


def cmd_check(a: argparse.Namespace) -> int:
    from planc.output import render
    from planc.output.console import progress, write_text
    from planc.pipeline import check_paths
    from planc.verifier.solve import SolverConfig

    with progress("checking " + " ".join(a.paths)):
        result = check_paths(a.paths, a.plan, SolverConfig(a.timeout_ms, a.rlimit))
    text = render(result, a.format, a.verbose)
    if a.output:
        write_atomic(a.output, text)
    elif a.format == "text":
        write_text(text, sys.stdout, a.color)
    else:
        sys.stdout.write(text)
    return result.exit_code


def _one_plan(a: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Load, check and lower the plan a command names; (plan, graph) or an exit code."""
    from planc.compiler.check_structure import check_structure
    from planc.compiler.lower import lower
    from planc.pipeline import find_plan

    diags = Diagnostics()
    sources: dict[str, str] = {}
    plan, text = find_plan(a.file, a.plan, diags, sources)
    if text:
        sources[a.file] = text
    if plan is not None and plan.has_holes:
        diags.error("E091", f"plan {plan.name!r} has holes (?)", plan.span,
                    f"run `planc check {printable(a.file)}` to complete it, then paste the values")
        plan = None
    if plan is not None and not check_structure(plan, diags):
        plan = None
    _print_diags(diags.sorted(), sources)
    if plan is None or diags.has_errors:
        return EXIT_FAIL
    return plan, lower(plan), sources


def cmd_compile(a: argparse.Namespace) -> int:
    got = _one_plan(a)
    if isinstance(got, int):
        return got
    _, graph, _ = got
    _emit_out(json.dumps(graph.model_dump(mode="json"), indent=2, sort_keys=True) + "\n",
              a.output)
    return EXIT_OK


def cmd_fmt(a: argparse.Namespace) -> int:
    from planc.fmt import format_paths

    return format_paths(a.paths, check=a.check, diff=a.diff)


def cmd_show(a: argparse.Namespace) -> int:
    from planc.output.console import write_text
    from planc.render.tables import show_text

    got = _one_plan(a)
    if isinstance(got, int):
        return got
    plan, graph, _ = got
    for path in (a.png, a.svg):
        if path:
            _draw(plan, graph, a.file, path)
    write_text(show_text(plan, graph, a.file), sys.stdout, a.color)
    return EXIT_OK


def _draw(plan, graph, file: str, path: str) -> None:  # type: ignore[no-untyped-def]
    """Draw the plan to a temporary file beside `path`, then rename: whole or not at all."""
    try:
        from planc.render.picture import draw
    except ImportError as e:  # pragma: no cover - matplotlib is an optional extra
        raise EnvironmentProblem(f"pictures need matplotlib ({e.name} is missing)",
                                 "pip install 'planc[plot]'") from None
    from planc.render.layout import picture

    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix,
                               dir=target.parent if str(target.parent) else ".")
    os.close(fd)
    try:
        draw(picture(plan, graph, file), tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {path}", file=sys.stderr)


def cmd_graph(a: argparse.Namespace) -> int:
    from planc.render.dot import to_dot

    got = _one_plan(a)
    if isinstance(got, int):
        return got
    plan, graph, _ = got
    _emit_out(to_dot(plan, graph), a.output)
    return EXIT_OK


def cmd_import(a: argparse.Namespace) -> int:
    """The explicit model block `model NAME from hf "PATH"` stands for, to read or edit."""
    import re

    from planc.models import hf_config

    diags = Diagnostics()
    sources: dict[str, str] = {}
    model = hf_config.read(a.path, "", None, diags, sources)
    _print_diags(diags.sorted(), sources)
    if model is None or diags.has_errors:
        return EXIT_FAIL
    stem = Path(a.path).name if Path(a.path).name != "config.json" else Path(a.path).parent.name
    name = a.name or re.sub(r"\W|^(?=\d)", "_", stem.removesuffix(".json")) or "model"
    if not name.isidentifier() or not name.isascii():
        raise UsageError(f"--name {name!r} is not a plan name (ASCII letters, digits, _)")
    _emit_out(hf_config.model_block(model, name, a.path), a.output)
    return EXIT_OK


def cmd_schema(a: argparse.Namespace) -> int:
    from planc.compiler.ir import PlacementGraph

    print(json.dumps(PlacementGraph.model_json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def cmd_parse(a: argparse.Namespace) -> int:
    import dataclasses

    from planc.grammar.parse import parse_file

    tree, _ = parse_file(a.file)

    def conv(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {"node": type(x).__name__,
                    **{f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}}
        if isinstance(x, tuple):
            return [conv(i) for i in x]
        if hasattr(x, "numerator"):
            return str(x)
        return x

    _emit_out(json.dumps(conv(tree), indent=1, sort_keys=True) + "\n", a.output)
    return EXIT_OK


def _verified(a: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The plan, graph and verdicts of a run/emit; refuses violated or unknown plans."""
    from planc.verifier import encode
    from planc.verifier.solve import decide

    got = _one_plan(a)
    if isinstance(got, int):
        return got
    plan, graph, sources = got
    verdicts = decide(encode.build(plan, graph), encode.variables(plan))
    bad = [v for v in verdicts if v.status in ("violated", "unknown")]
    for v in bad:
        ob = v.obligation
        msg = ob.bad if v.status == "violated" else f"{ob.name}: unknown ({v.reason})"
        print(render(Diagnostic(ob.code, msg, ob.span, "error", ob.hint, ob.related), sources),
              file=sys.stderr)
    if bad:
        print(f"plan {plan.name!r} is not proved; fix it before emitting or running it",
              file=sys.stderr)
        return EXIT_FAIL if any(v.status == "violated" for v in bad) else EXIT_UNKNOWN
    return plan, graph


def _torch_backend():  # type: ignore[no-untyped-def]
    try:
        from planc.backends.torch import emit, launch
    except ImportError as e:
        raise EnvironmentProblem(
            f"the torch backend needs torch, safetensors and transformers ({e.name} is missing)",
            "pip install torch==2.13.0 'planc[torch]' (CPU), or any torch >= 2.4 you have") from None
    return emit, launch


class EnvironmentProblem(Exception):
    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


def _emit(emit, cfg, plan, file: str) -> str:  # type: ignore[no-untyped-def]
    """The program, or an EnvironmentProblem-free user error when the runtime refuses the
    config (a plan the verifier proved but no runtime block can run: a planc gap, reported
    plainly with what the runtime said rather than as a crash)."""
    try:
        return emit.emit_program(cfg, plan_name=plan.name, source_file=Path(file).name)
    except ValueError as e:
        raise RuntimeRefusal(str(e)) from None


class RuntimeRefusal(Exception):
    pass


def cmd_emit(a: argparse.Namespace) -> int:
    from planc.backends.torch.runconfig import to_run_config

    got = _verified(a)
    if isinstance(got, int):
        return got
    plan, graph = got
    emit, _ = _torch_backend()
    cfg = to_run_config(plan, graph, dtype=a.dtype)
    _emit_out(_emit(emit, cfg, plan, a.file),
              a.output)
    return EXIT_OK


def _runnable(a: argparse.Namespace, **run: Any):  # type: ignore[no-untyped-def]
    """(plan, its RunConfig, emit, launch) of a verified plan to run, or an exit code."""
    from planc.backends.torch.runconfig import to_run_config

    if run.get("warmup", 0) < 0 or run.get("repeats", 1) < 1:
        raise UsageError(f"--warmup {run['warmup']} --repeats {run['repeats']}: need warmup >= 0 "
                         "and repeats >= 1")
    got = _verified(a)
    if isinstance(got, int):
        return got
    plan, graph = got
    emit, launch = _torch_backend()
    dtype = a.dtype or ("float32" if a.device == "cpu" else None)
    return plan, to_run_config(plan, graph, dtype=dtype, **run), emit, launch


def _launch(a: argparse.Namespace, emit, launch, cfg, plan,  # type: ignore[no-untyped-def]
            program_args: list[str] | None = None):
    """Pre-flight, then emit the plan's program and run it under torchrun on this node: an exit
    code when it was not launched or failed, else (rank 0's metrics, None on a node without
    rank 0; why the output differs from the reference, or None)."""
    from planc.output.console import progress

    nproc = cfg.world_size // a.nnodes
    if cfg.world_size % a.nnodes:
        raise UsageError(f"--nnodes {a.nnodes} does not divide the plan's {cfg.world_size} ranks")
    if a.device == "cuda":
        visible = launch.visible_gpus()
        if visible < nproc:
            raise EnvironmentProblem(
                f"plan {plan.name!r} needs {nproc} GPUs on this node; {visible} visible",
                "run on a machine with more GPUs, or shrink the mesh")
    if not _preflight(a, plan, cfg, nproc):
        return EXIT_FAIL
    program = _emit(emit, cfg, plan, a.file)
    if a.keep:
        write_atomic(a.keep, program)
    with tempfile.TemporaryDirectory(prefix="planc-run-") as tmp:
        prog = Path(tmp) / "program.py"
        prog.write_text(program, encoding="utf-8")
        what = f"running plan {plan.name!r} on {plural(cfg.world_size, a.device + ' rank')}"
        print(what + " ...", file=sys.stderr)
        try:
            with progress(what):  # a spinner and the elapsed time, on a terminal only
                return launch.run_program(
                    str(prog), nproc=nproc, device=a.device, weights=a.weights,
                    timeout_s=a.timeout, nnodes=a.nnodes, node_rank=a.node_rank,
                    rdzv_endpoint=a.rdzv_endpoint, program_args=program_args), None
        except launch.OutputDiffers as e:
            return e.metrics, str(e)
        except launch.LaunchError as e:
            print(f"error[R001]: the run failed: {e}", file=sys.stderr)
            return EXIT_USAGE


def cmd_run(a: argparse.Namespace) -> int:
    got = _runnable(a, warmup=a.warmup, repeats=a.repeats)
    if isinstance(got, int):
        return got
    plan, cfg, emit, launch = got
    if a.no_reference:
        cfg = _with(cfg, check_reference=False)
    ran = _launch(a, emit, launch, cfg, plan)
    if isinstance(ran, int):
        return ran
    metrics, differs = ran
    if metrics is None:  # a non-zero node rank writes no metrics
        return EXIT_OK
    metrics = {"plan": plan.name, "file": a.file, **metrics}
    text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    if a.output:
        write_atomic(a.output, text)
    if a.format == "json":
        sys.stdout.write(text)
    else:
        sys.stdout.write(_run_text(metrics))
    if differs is not None:
        print(f"error[R004]: {differs}\n  = hint: the plan's model and its checkpoint disagree "
              "(config.json fields, tensors) or the runtime is wrong for this plan; the metrics "
              "above hold both outputs' numbers", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def cmd_generate(a: argparse.Namespace) -> int:
    """Check the prompts against the plan and the checkpoint's tokenizer, and the checkpoint
    and the device (pre-flight; nothing launched on bad input), run the plan's decode program
    on them, print or write the texts."""
    got = _runnable(a, warmup=0, repeats=1)
    if isinstance(got, int):
        return got
    plan, cfg, emit, launch = got
    from planc.backends.torch.prompts import options, prepare

    cfg = _with(cfg, check_reference=False)
    request = prepare(cfg, a.weights, a.prompt, a.prompts, options(a))  # bad input: exit 1 here
    args = [f"--prompt={a.prompt}"] if a.prompt is not None else [
        f"--prompts={Path(a.prompts).resolve()}"]
    args += [f"--max-new-tokens={request.max_new_tokens}", f"--temperature={a.temperature!r}",
             f"--top-p={a.top_p!r}", f"--seed={a.seed}"]
    ran = _launch(a, emit, launch, cfg, plan, args)
    if isinstance(ran, int):
        return ran
    metrics, _ = ran  # no reference: nothing to differ from
    if metrics is None:  # a non-zero node rank writes no metrics
        return EXIT_OK
    keys = ("prompt", "text", "tokens", "finish_reason")  # the metrics JSON sorted them
    results = [{k: r[k] for k in keys} for r in metrics["results"]]
    if a.output:
        write_atomic(a.output, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                       for r in results))
    else:
        sys.stdout.write("".join(r["text"] + "\n" for r in results))
    stops = sum(r["finish_reason"] == "stop" for r in results)
    print(f"plan {plan.name}: {plural(len(results), 'prompt')}, "
          f"{plural(metrics['output_tokens'], 'new token')} ({stops} stopped at a stop token), "
          f"{plural(sum(metrics['steps']), 'step')} in {metrics['latency_ms'] / 1e3:.2f} s"
          + (f"; wrote {a.output}" if a.output else ""), file=sys.stderr)
    return EXIT_OK


def _preflight(a: argparse.Namespace, plan, cfg, nproc: int) -> bool:  # type: ignore[no-untyped-def]
    """The checkpoint and the device against the plan, before any rank starts; False (with the
    diagnostics printed) when something disagrees."""
    from planc.backends.torch import preflight
    from planc.grammar.parse import read_source

    diags = Diagnostics()
    sources = {a.file: read_source(a.file)}
    preflight.check(plan, weights=a.weights, device=a.device, run_dtype=cfg.dtype, nproc=nproc,
                    node_rank=a.node_rank, reference=cfg.check_reference, diags=diags,
                    sources=sources)
    _print_diags(diags.sorted(), sources)
    if diags.has_errors:
        print(f"pre-flight: plan {plan.name!r} was not launched", file=sys.stderr)
    return not diags.has_errors


def _with(cfg, **changes):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def _run_text(m: dict[str, Any]) -> str:
    from planc.compiler.units import human_bytes

    if m.get("tpot_ms") is not None or m.get("ttft_ms") is not None:
        match = m.get("matches_reference")
        lines = [f"plan {m['plan']}: {plural(m.get('world_size') or 0, 'rank')} on "
                 f"{m.get('device')}, decode: "
                 f"TTFT {m.get('ttft_ms', 0):.2f} ms, TPOT {m.get('tpot_ms') or 0:.3f} ms, "
                 f"{m.get('output_tokens_per_s', 0):,.0f} output tokens/s"
                 + ("" if match is None else
                    f"; tokens {'equal' if match else 'DIFFER from'} Hugging Face generate")]
    else:
        lines = [(f"plan {m['plan']}: {plural(m.get('world_size') or 0, 'rank')} on "
                  f"{m.get('device')}, "
                  f"{m.get('tokens_per_s', 0):,.0f} tokens/s (forward "
                  f"{m.get('time_s', 0) * 1e3:.2f} ms)")]
    if m.get("max_rel_error") is not None:
        lines.append(f"  against the Hugging Face reference: max abs error "
                     f"{m['max_abs_error']:.3g}, max rel error {m['max_rel_error']:.3g}")
    for r in m.get("ranks", []):
        pa = r.get("peak_allocated")
        pr = r.get("predicted_peak")
        if pa:
            lines.append(f"  rank {r['rank']}: peak allocated {human_bytes(pa)}, "
                         f"predicted {human_bytes(pr or 0)}")
    return "\n".join(lines) + "\n"


def cmd_calibrate(a: argparse.Namespace) -> int:
    _torch_backend()  # the same message as run when torch is missing
    from planc.backends.torch import calibrate as cal

    try:
        groups = tuple(int(g) for g in a.groups.split(",") if g.strip())
    except ValueError:
        raise UsageError(f"--groups takes sizes such as 2,4, not {a.groups!r}") from None
    if a.gpus < 1 or any(g < 1 or g > a.gpus for g in groups):
        raise UsageError(f"--gpus must be >= 1 and every --groups size between 1 and {a.gpus}")
    try:
        c = cal.calibrate(a.device, a.gpus, groups, a.quick,
                          None if a.margin_mib is None else a.margin_mib * 2**20)
    except RuntimeError as e:
        raise EnvironmentProblem(str(e), "calibrate on the machine the plans will run on") \
            from None
    _emit_out(cal.device_block(c, a.name), a.output)
    if a.json:
        write_atomic(a.json, json.dumps(cal.to_json(c), indent=1, sort_keys=True) + "\n")
    return EXIT_OK


COMMANDS = {"check": cmd_check, "compile": cmd_compile, "schema": cmd_schema, "emit": cmd_emit,
            "run": cmd_run, "generate": cmd_generate, "parse": cmd_parse, "fmt": cmd_fmt,
            "show": cmd_show, "graph": cmd_graph, "calibrate": cmd_calibrate, "import": cmd_import}


def _flag_value(argv: list[str], *names: str) -> str | None:
    """The value of a flag found by scanning argv, for when argparse itself failed."""
    for i, tok in enumerate(argv):
        for n in names:
            if tok == n:
                return argv[i + 1] if i + 1 < len(argv) else None
            if n.startswith("--") and tok.startswith(n + "="):
                return tok.split("=", 1)[1]
            if not n.startswith("--") and tok.startswith(n) and len(tok) > len(n):
                return tok[len(n):]
    return None


def _failure_document(argv: list[str], message: str, code: str, exit_code: int,
                      hint: str = "see `planc --help`") -> None:
    """Keep machine-readable output valid when the command failed before producing it."""
    fmt = _flag_value(argv, "--format")
    if fmt is None or fmt == "text":
        return
    doc = usage_error(fmt, message, code, exit_code, hint)
    if doc is None:
        return
    out = _flag_value(argv, "--output", "-o")
    try:
        if out and out != "-":
            write_atomic(out, doc)
        else:
            sys.stdout.write(doc)
    except OSError as e:
        print(f"planc: cannot write {out}: {e.strerror}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PLANC_DEBUG") == "1"
    try:
        a = _parser().parse_args(argv)
        if a.command is None:
            raise UsageError("missing command; try `planc --help`")
        return COMMANDS[a.command](a)
    except UsageError as e:
        _failure_document(argv, str(e), "U001", EXIT_USAGE)
        print(f"planc: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except PlancError as e:
        print(render(e.diagnostic, {}), file=sys.stderr)
        return EXIT_FAIL
    except RuntimeRefusal as e:
        print(f"error[R003]: the runtime cannot run this plan: {e}\n  = hint: the verifier "
              "proved it, so this is a gap between the two; please report it with the plan",
              file=sys.stderr)
        return EXIT_FAIL
    except EnvironmentProblem as e:
        print(f"error[R002]: {e}\n  = hint: {e.hint}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("planc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    except BrokenPipeError:
        return EXIT_OK
    # a planc bug: say so plainly, show the traceback only with --debug
    except Exception as e:  # noqa: BLE001 - the process boundary, reported as U002
        from planc.verifier.solve import InternalError

        if debug:
            traceback.print_exc()
        kind = "internal error" if not isinstance(e, InternalError) else "verifier disagreement"
        _failure_document(argv, f"planc {kind}: {type(e).__name__}: {e}", "U002", EXIT_INTERNAL,
                          "a bug in planc; rerun with --debug and report the traceback")
        print(f"planc: {kind}: {type(e).__name__}: {e}\n  this is a bug in planc; rerun with "
              "--debug and report the traceback", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
