"""resolve: AST -> SpecFile. Binds names, normalises units, fills presets and defaults.

Every problem is collected (not raised) so a user sees all of a file's semantic errors at once.
A block with errors is left out of the result; plans that reference it are skipped silently
(the error at the referenced block already explains why).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from fractions import Fraction
from typing import Any, overload

from planc.compiler import presets, units
from planc.compiler.inherit import inherit
from planc.compiler.spec import (
    DIMS,
    DTYPE_BYTES,
    ClusterSpec,
    DeviceSpec,
    ModelSpec,
    PlanSpec,
    RequireSpec,
    ShardSpec,
    SpecFile,
    WorkloadSpec,
)
from planc.diagnostics import Diagnostics, Related, Span, did_you_mean, one_of, printable
from planc.grammar import ast
from planc.models import hf_config
from planc.models.features import ModelFeatures

MAX_DIM = 2**40  # larger than any real model dimension or device count; catches typos like 1e30
# The largest mesh planc verifies and reports on (its reports list ranks): 2**20 = 1,048,576
# devices checks in seconds; a mesh of 70 axes of size 2 (2**71 devices) hung the report.
MAX_DEVICES = 2**20
# Per-device quantities above these are typos (the largest HBM today is 288 GB): 1 PiB, 100 PB/s,
# 100 EFLOPS. Anything else (links, require values) is capped at 2**80 base units.
MAX_QUANTITY = {"bytes": (2**50, "1 PiB"), "bytes_per_s": (10**17, "100 PB/s"),
                "flops_per_s": (10**20, "100 EFLOPS")}
EXAMPLE_UNIT = {"bytes": "GB", "bytes_per_s": "GB/s", "flops_per_s": "TFLOPS"}
MAX_ANY = 2**80
MIN_DEVICE_MEMORY = 2**20  # less is a missing unit prefix (and makes percentage limits zero)
MIN_ANY = Fraction(1, 10**15)  # a femtosecond: smaller positive values are typos
NOT_A_NUMBER = ("nan", "inf", "infinity")
NO_INCLUDE = ("include", "import", "use", "source")

# key -> (dimension of the value, required?)
DEVICE_KEYS: dict[str, units.Dimension] = {
    "memory": "bytes", "cache": "bytes", "compute": "flops_per_s", "bandwidth": "bytes_per_s",
    "reserve": "bytes", "workspace": "bytes", "autotune": "bytes",
    # measured rates (planc calibrate): estimates only, never the bounds
    "gemm": "flops_per_s", "attention": "flops_per_s", "hbm": "bytes_per_s",
    "allreduce": "bytes_per_s", "latency": "seconds",
    # the datasheet TDP: only power and energy claims use it
    "power": "watts"}
CLUSTER_KEYS = {"device": "count_of", "node": "count", "link": "named_rate"}
MODEL_KEYS = {"arch": "name", "layers": "count", "hidden": "count", "heads": "count",
              "kv_heads": "count", "head_dim": "count", "ffn": "count", "vocab": "count",
              "dtype": "name", "experts": "count", "top_k": "count",
              # family data (planc/models/features.py); `from hf` fills them from config.json
              "family": "name", "rope_theta": "number", "norm_eps": "number",
              "qkv_bias": "flag", "qk_norm": "flag", "tie_embeddings": "flag",
              "norm_topk": "flag", "sliding_window": "count", "rope_type": "name",
              # llama3 rope scaling (rope_type llama3), named after HF's rope_parameters
              "rope_factor": "number", "rope_low_freq_factor": "number",
              "rope_high_freq_factor": "number", "rope_original_max_positions": "count",
              "max_positions": "count"}
WORKLOAD_KEYS = {"batch": "count_or_hole", "seq": "count_or_hole", "phase": "name",
                 "context": "count", "generate": "count"}
PLAN_KEYS = {"model": "name", "cluster": "name", "workload": "name"}
REPEATABLE = {"link"}  # one line per link kind (intra, inter)
KEYS_BY_KIND: dict[str, Mapping[str, str]] = {
    "device": DEVICE_KEYS, "cluster": CLUSTER_KEYS, "model": MODEL_KEYS,
    "workload": WORKLOAD_KEYS, "plan": PLAN_KEYS}
REQUIRED = {
    "cluster": ("device",),
    "model": ("layers", "hidden", "heads", "ffn"),
    "workload": ("batch", "seq"),
    "plan": ("model", "cluster", "workload"),
}
ARCHS = ("llama", "mixtral")
# Hugging Face model_type -> the arch whose structure it has (dense Llama-style or MoE).
FAMILIES = {t: f.arch for t, f in hf_config.FAMILIES.items()}
FLAGS = {"true": True, "false": False}
PHASES = ("prefill", "decode")
ATTENTION_MODES = ("local", "ring", "gather")
# require METRIC -> the value dimensions it accepts
METRICS: dict[str, tuple[units.Dimension, ...]] = {
    "memory": ("bytes", "percent"),  # peak HBM per device
    "cache": ("bytes", "percent"),  # resident working set per fit-cache stage
    "params": ("count",),  # total parameter count of the model
    "layer_params": ("count",),
    "weights": ("bytes",),  # total weight bytes of the model (after compression)
    "layer_weights": ("bytes",),  # weight bytes of one layer (after compression)
    "weights_per_device": ("bytes",),
    "activations": ("bytes",),  # peak activation bytes per device
    "throughput": ("tokens_per_s",),
    "latency": ("seconds",),  # time of one forward step (prefill) or one token (decode)
    "tpot": ("seconds",),  # prefill: step time per token (the seeds' use); decode: per step
    "ttft": ("seconds",),  # decode: time to first token (the prompt's prefill)
    "devices": ("count",),
    # the seeds' own quantities (cost/claims.py says how each is computed)
    "layer_activations": ("bytes",),  # the whole batch's input to one layer
    "expert_weights": ("bytes",),  # weight bytes of one expert (gate, up and down)
    "expert_weights_per_device": ("bytes",),  # experts' weight bytes on the fullest device
    "transfer": ("bytes",),  # one pipeline send/recv: a microbatch's activations
    "ring_step": ("bytes",),  # K and V one device passes on per ring step
    "collective": ("bytes",),  # payload of the largest collective call per device
    "communication": ("bytes",),  # bytes one device sends per forward step (all collectives)
    "communication_buffers": ("bytes",),  # the communication-role buffers of the fullest device
    "tp_weights_per_device": ("bytes",),  # weights split over a tp axis, experts excepted
    "token_size": ("bytes",),  # one token's hidden state: hidden x dtype
    "bandwidth": ("bytes_per_s",),  # throughput x token size; checked against the throughput
    "utilization": ("percent",),  # FLOPs per token x throughput / peak; checked against it
    "power": ("watts",),  # all devices' draw: at most devices x TDP
    "energy_per_token": ("joules",),  # at least FLOPs per token / (peak FLOP/s per watt)
    "tokens_per_joule": ("tokens_per_joule",),  # at most the inverse of that
    # L2 hits / read requests per device over a step: conditional on the kernels' re-requests
    "cache_hit_rate": ("percent",),
}
# time: TPOT for decode, time per token for prefill (cost/performance.objective_value)
OBJECTIVES = {"minimize": ("time", "tpot", "ttft", "memory", "devices"),
              "maximize": ("batch", "seq", "throughput")}


class _Values:
    """Reads key/value props of one block, reporting each problem against its line."""

    def __init__(self, block: ast.Block, diags: Diagnostics):
        self.block = block
        self.diags = diags
        self.props: dict[str, ast.Prop] = {}
        self.ok = True
        allowed = KEYS_BY_KIND[block.kind]
        for stmt in block.body:
            if not isinstance(stmt, ast.Prop):
                if block.kind != "plan":
                    self._err("E010", f"`{_stmt_word(stmt)}` belongs in a plan block, not in a "
                              f"{block.kind} block", stmt.span, "move it into the plan")
                continue
            key = stmt.key.name
            if key not in allowed:
                self._unknown_key(stmt, allowed)
                continue
            if key in self.props and key not in REPEATABLE:
                first = self.props[key]
                self._err("E011", f"{key!r} is set twice in {block.kind} {block.name.name!r}",
                          stmt.key.span, "keep one of them",
                          (Related(first.key.span, "first set here"),))
                continue
            self.props[key] = stmt

    def _err(self, code: str, msg: str, span: Span, hint: str | None = None,
             related: tuple[Related, ...] = ()) -> None:
        self.ok = False
        self.diags.error(code, msg, span, hint, related)

    def _unknown_key(self, stmt: ast.Prop, allowed: Mapping[str, str]) -> None:
        key = stmt.key.name
        if key in NO_INCLUDE:
            self._err("E012", f"planc has no `{key}`: a .plan file is self-contained",
                      stmt.key.span, "copy the blocks this file needs into it")
            return
        owner = next((k for k, keys in KEYS_BY_KIND.items() if key in keys and k != "plan"), None)
        guess = did_you_mean(key, allowed)
        if owner:  # an exact key of another block beats a look-alike of this one's
            hint = f"{key!r} belongs in a {owner} block"
        elif guess:
            hint = f"did you mean {guess!r}?"
        else:
            hint = f"a {self.block.kind} block takes: {one_of(allowed)}"
        self._err("E012", f"unknown key {key!r} in a {self.block.kind} block", stmt.key.span, hint)

    def has(self, key: str) -> bool:
        return key in self.props

    def span(self, key: str) -> Span:
        return self.props[key].span if key in self.props else self.block.name.span

    def require_keys(self, keys: tuple[str, ...]) -> None:
        for k in keys:
            if k not in self.props:
                self._err("E013", f"{self.block.kind} {self.block.name.name!r} needs `{k}`",
                          self.block.name.span, f"add a line `{k} ...` to the block")

    def count(self, key: str, default: int | None = None, minimum: int = 1) -> int | None:
        if key not in self.props:
            return default
        v = self.props[key].value
        if isinstance(v, ast.Hole):
            self._err("E020", f"`{key}` cannot be left open (?) here", v.span,
                      "holes are allowed in mesh sizes, microbatches, batch and seq")
            return default
        if isinstance(v, ast.NameValue) and v.name.name.lower() in NOT_A_NUMBER:
            self._err("E021", f"`{key}` takes a finite number, not {v.name.name}", v.span,
                      f"e.g. `{key} 16`")
            return default
        if not isinstance(v, ast.Quantity) or v.unit is not None:
            self._err("E021", f"`{key}` takes a plain number", v.span,
                      f"e.g. `{key} 16`" + ("" if not isinstance(v, ast.Quantity) or v.unit is None
                                             else f" (drop the unit {v.unit.name!r})"))
            return default
        return self._integer(key, v.number, minimum)

    def _integer(self, key: str, num: ast.Number, minimum: int, maximum: int = MAX_DIM
                 ) -> int | None:
        if num.value.denominator != 1:
            self._err("E022", f"`{key}` must be a whole number, not {num.text}", num.span)
            return None
        n = int(num.value)
        if n < minimum:
            self._err("E023", f"`{key}` must be at least {minimum}, not {n}", num.span)
            return None
        if n > maximum:
            self._err("E024", f"`{key}` is {num.text}, larger than any real value "
                      f"({maximum:,})", num.span, "is the exponent a typo?")
            return None
        return n

    def count_or_hole(self, key: str) -> tuple[int | None, bool]:
        if key in self.props and isinstance(self.props[key].value, ast.Hole):
            return None, True
        return self.count(key), False

    @overload
    def name(self, key: str, choices: tuple[str, ...] | None, default: str) -> str: ...
    @overload
    def name(self, key: str, choices: tuple[str, ...] | None, default: None = None
             ) -> str | None: ...

    def name(self, key: str, choices: tuple[str, ...] | None, default: str | None = None
             ) -> str | None:
        if key not in self.props:
            return default
        v = self.props[key].value
        if not isinstance(v, ast.NameValue):
            self._err("E021", f"`{key}` takes a name", v.span,
                      f"one of: {one_of(choices)}" if choices else None)
            return default
        if choices is not None and v.name.name not in choices:
            guess = did_you_mean(v.name.name, choices)
            self._err("E025", f"unknown {key} {v.name.name!r}", v.name.span,
                      f"did you mean {guess!r}?" if guess else f"one of: {one_of(choices)}")
            return default
        return v.name.name

    def number(self, key: str, default: float) -> float:
        """A positive plain number that may have a fraction (rope_theta 500000, norm_eps 1e-6)."""
        if key not in self.props:
            return default
        v = self.props[key].value
        if not isinstance(v, ast.Quantity) or v.unit is not None or v.number.value <= 0:
            self._err("E021", f"`{key}` takes a positive plain number", v.span,
                      f"e.g. `{key} {default:g}`")
            return default
        return float(v.number.value)

    def flag(self, key: str, default: bool) -> bool:
        name = self.name(key, tuple(FLAGS))
        return default if name is None else FLAGS[name]

    def measure(self, key: str, dimension: units.Dimension, default: Any = None) -> Any:
        if key not in self.props:
            return default
        if dimension == "seconds":  # a time is not a whole number of seconds
            return quantity_exact(self.props[key].value, dimension, key, self._err)
        return quantity_int(self.props[key].value, dimension, key, self._err)


def quantity_int(v: Any, dimension: units.Dimension, key: str,
                 err: Callable[..., None]) -> int | None:
    """A quantity with a unit of the given dimension, as an exact positive integer."""
    exact = quantity_exact(v, dimension, key, err)
    if exact is None:
        return None
    if exact.denominator != 1:
        err("E022", f"`{key}` is {v.number.text} {v.unit.name} = {float(exact)} in base units; "
            "it must be a whole number of bytes", v.span, "use a smaller unit")
        return None
    return int(exact)


def quantity_exact(v: Any, dimension: units.Dimension, key: str,
                   err: Callable[..., None]) -> Fraction | None:
    """A quantity with a unit of the given dimension, as an exact positive Fraction."""
    if not isinstance(v, ast.Quantity):
        err("E021", f"`{key}` takes {units.DIMENSION_WORDS[dimension]}", v.span)
        return None
    if v.unit is None:
        example = EXAMPLE_UNIT.get(dimension) or units.units_of(dimension)[0]
        err("E026", f"`{key}` needs a unit", v.span,
            f"e.g. `{key} {v.number.text} {example}`; units: "
            + ", ".join(units.units_of(dimension)))
        return None
    found = units.lookup(v.unit.name)
    if found is None or found[0] != dimension:
        guess = did_you_mean(v.unit.name, units.units_of(dimension))
        what = "unknown unit" if found is None else "wrong kind of unit"
        hint = (f"did you mean {guess!r}?" if guess else
                "units: " + ", ".join(units.units_of(dimension)))
        if dimension.startswith("bytes") and re.fullmatch(r"[KMGTP]i?(b|bit)(/s|ps)?",
                                                          v.unit.name):
            # Gb, Mbit: a bit is an eighth of a byte; guessing GB would silently mean 8x more
            hint = (f"{v.unit.name!r} reads as bits; planc counts bytes: B, KB, MB, GB, TB "
                    "(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)")
        err("E027", f"{what} {v.unit.name!r} for `{key}`: it takes "
            f"{units.DIMENSION_WORDS[dimension]}", v.unit.span, hint)
        return None
    exact = v.number.value * found[1]
    if exact <= 0:
        err("E023", f"`{key}` must be positive", v.span)
        return None
    cap, cap_text = MAX_QUANTITY.get(dimension, (MAX_ANY, "2**80 base units"))
    if exact > cap:
        err("E024", f"`{key}` is {v.number.text} {v.unit.name}, larger than any real value "
            f"(the limit is {cap_text})", v.span, "is the exponent a typo?")
        return None
    return exact


def _stmt_word(stmt: ast.Statement) -> str:
    return {ast.Mesh: "mesh", ast.Shard: "shard", ast.Compress: "compress",
            ast.Require: "require", ast.Objective: "objective"}.get(type(stmt), "statement")


# ---------------------------------------------------------------------------------------------


def resolve(file: ast.PlanFile, diags: Diagnostics) -> SpecFile:
    seen: dict[tuple[str, str], ast.Block] = {}
    by_kind: dict[str, list[ast.Block]] = {k: [] for k in KEYS_BY_KIND}
    for b in file.blocks:
        key: tuple[str, str] = (b.kind, b.name.name)
        if key in seen:
            diags.error("E001", f"{b.kind} {b.name.name!r} is defined twice", b.name.span,
                        "rename one of them", (Related(seen[key].name.span, "first defined here"),))
            continue
        seen[key] = b
    merged = inherit(seen, tuple(presets.PRESETS), diags)
    for key in seen:
        if key in merged:
            by_kind[key[0]].append(merged[key])

    devices: dict[str, DeviceSpec] = {}
    for b in by_kind["device"]:
        d = _device(b, diags)
        if d is not None:
            devices[d.name] = d
    # a block left out for a bad `from` is still declared: what names it is skipped silently
    declared = {k: {n for kind, n in seen if kind == k} for k in KEYS_BY_KIND}
    declared_devices = declared["device"]
    clusters = {c.name: c for b in by_kind["cluster"]
                if (c := _cluster(b, devices, declared_devices, diags))}
    sources: dict[str, str] = {}
    models = {m.name: m for b in by_kind["model"]
              if (hb := _from_source(b, file.path, sources, diags)) and (m := _model(hb, diags))}
    workloads = {w.name: w for b in by_kind["workload"] if (w := _workload(b, diags))}
    _no_plan(file, diags)
    plans = []
    for b in by_kind["plan"]:
        p = _plan(b, file.path, models, clusters, workloads, declared, diags)
        if p is not None:
            plans.append(p)
    return SpecFile(file.path, tuple(plans), models, clusters, workloads, devices, sources)


def _from_source(b: ast.Block, path: str, sources: dict[str, str], diags: Diagnostics
                 ) -> ast.Block | None:
    """`model m from hf "ckpt"`: the block with its config.json's values as lines before its
    own, which override them (what-if checks). The lines keep their config.json positions, so
    every later diagnostic about a value points at the field it came from."""
    if b.source is None:
        return b
    src = b.source
    if b.kind != "model" or src.kind.name != "hf":
        diags.error("E070", f'`from {src.kind.name} "..."` is not a source planc reads'
                    + ("" if b.kind == "model" else f" for a {b.kind} block"), src.span,
                    'a model block can read a Hugging Face checkpoint: `model m from hf "DIR"`')
        return None
    if not src.path:
        diags.error("E070", "the checkpoint path is empty", src.path_span,
                    'give a directory or its config.json: `from hf "llama3_8b"`')
        return None
    model = hf_config.read(src.path, path, src.path_span, diags, sources)
    if model is None:
        return None
    own = {s.key.name for s in b.body if isinstance(s, ast.Prop)}
    props = tuple(_prop(k, value, span) for k, (value, span) in model.values.items()
                  if k not in own)
    return replace(b, body=props + b.body)


def _prop(key: str, value: hf_config.ConfigValue, span: Span) -> ast.Prop:
    """A model-block line for a config.json value, located at the field."""
    text = hf_config.plan_value(value)
    v: ast.Value
    if isinstance(value, (bool, str)):
        v = ast.NameValue(ast.Ident(text, span), span)
    else:
        v = ast.Quantity(ast.Number(Fraction(repr(value)), text, span), None, span)
    return ast.Prop(ast.Ident(key, span), v, span)


def _no_plan(file: ast.PlanFile, diags: Diagnostics) -> None:
    """A file without a plan verifies nothing: an empty one is an error (a truncated or wrong
    file), one with only definitions a warning (there is no include, so nothing can use them)."""
    if any(b.kind == "plan" for b in file.blocks):
        return
    start = Span.point(file.path, 1, 1)
    if not file.blocks:
        diags.error("E005", f"{printable(file.path)} has no blocks (it is empty or only comments): "
                    "nothing to check", start, "a .plan file holds at least one `plan NAME { }`")
    else:
        first = file.blocks[0].name.span
        diags.warning("W005", f"{printable(file.path)} declares {len(file.blocks)} block(s) "
                      "but no plan: nothing is verified", first,
                      "add a `plan NAME { ... }` that uses them")


def _device(b: ast.Block, diags: Diagnostics) -> DeviceSpec | None:
    """A device block, its `from` device blocks already merged in (inherit): what is left of a
    base is a preset, or the block's own name when it is a preset's."""
    v = _Values(b, diags)
    base_name = b.base.name if b.base else (b.name.name if b.name.name in presets.PRESETS else None)
    base = dict(presets.PRESETS[base_name]) if base_name in presets.PRESETS else {}
    vals = {k: v.measure(k, dim, base.get(k)) for k, dim in DEVICE_KEYS.items()}
    if vals["memory"] is not None and vals["memory"] < MIN_DEVICE_MEMORY:
        v._err("E023", f"`memory` is {vals['memory']:,} B; a device has at least 1 MiB",
               v.span("memory"), "is a unit prefix missing? e.g. `memory 80 GB`")
    for k in ("reserve", "workspace", "autotune"):
        if vals[k] is None:
            vals[k] = 0
    for k in ("memory", "cache", "compute", "bandwidth"):
        if vals[k] is None and v.ok:
            v._err("E013", f"device {b.name.name!r} needs `{k}`", b.name.span,
                   f"add `{k} ...`, or start from a preset: `device {b.name.name} from H100 {{`")
    if not v.ok:
        return None
    return DeviceSpec(b.name.name, span=b.name.span, **vals)  # type: ignore[arg-type]


def _cluster(b: ast.Block, devices: dict[str, DeviceSpec], declared: set[str],
             diags: Diagnostics) -> ClusterSpec | None:
    v = _Values(b, diags)
    v.require_keys(REQUIRED["cluster"])
    device: DeviceSpec | None = None
    count = None
    count_span = None
    if v.has("device"):
        val = v.props["device"].value
        if not isinstance(val, ast.CountValue):
            v._err("E021", "`device` takes a device and a count", val.span,
                   "e.g. `device H100 x 16`")
        else:
            dname = val.name.name
            if dname in devices:
                device = devices[dname]
            elif dname in presets.PRESETS:
                device = DeviceSpec(dname, span=val.name.span, **presets.PRESETS[dname])
            elif dname in declared:
                v.ok = False  # declared but invalid: its own errors explain
            else:
                guess = did_you_mean(dname, list(devices) + list(presets.PRESETS))
                v._err("E002", f"unknown device {dname!r}", val.name.span,
                       f"did you mean {guess!r}?" if guess else
                       f"declare `device {dname} {{ ... }}` or use a preset: "
                       f"{one_of(presets.PRESETS)}")
            count = v._integer("device count", val.count, 1, MAX_DEVICES)
            count_span = val.count.span
    per_node = v.count("node")
    intra, inter = presets.DEFAULT_INTRA, presets.DEFAULT_INTER
    if v.has("link"):
        # several link lines are allowed: collect them from the block directly
        links: dict[str, Span] = {}
        for stmt in b.body:
            if not (isinstance(stmt, ast.Prop) and stmt.key.name == "link"):
                continue
            val = stmt.value
            if not isinstance(val, ast.NamedQuantity) or val.name.name not in ("intra", "inter"):
                v._err("E021", "`link` takes intra or inter and a bandwidth", val.span,
                       "e.g. `link intra 450 GB/s`")
                continue
            bw = quantity_int(val.quantity, "bytes_per_s", "link", v._err)
            if val.name.name in links:
                v._err("E011", f"link {val.name.name} is set twice", val.name.span,
                       "keep one of them", (Related(links[val.name.name], "first set here"),))
                continue
            links[val.name.name] = val.name.span
            if bw is not None:
                if val.name.name == "intra":
                    intra = bw
                else:
                    inter = bw
    if not v.ok or device is None or count is None:
        return None
    if per_node is None:
        per_node = min(count, 8)
    return ClusterSpec(b.name.name, device, count, per_node, intra, inter, span=b.name.span,
                       count_span=count_span)


def _model(b: ast.Block, diags: Diagnostics) -> ModelSpec | None:
    v = _Values(b, diags)
    v.require_keys(REQUIRED["model"])
    family = v.name("family", tuple(FAMILIES), None)
    arch = v.name("arch", ARCHS, FAMILIES[family] if family else "llama")
    if family and FAMILIES[family] != arch:
        v._err("E019", f"family {family!r} has arch {FAMILIES[family]}, not {arch}",
               v.span("family"), f"drop `arch` or set `arch {FAMILIES[family]}`")
    defaults = ModelFeatures()
    features = ModelFeatures(
        family=family or arch,
        rope_theta=v.number("rope_theta", defaults.rope_theta),
        norm_eps=v.number("norm_eps", defaults.norm_eps),
        qkv_bias=v.flag("qkv_bias", defaults.qkv_bias),
        qk_norm=v.flag("qk_norm", defaults.qk_norm),
        tie_embeddings=v.flag("tie_embeddings", defaults.tie_embeddings),
        norm_topk=v.flag("norm_topk", defaults.norm_topk),
        rope_scaling=_rope_scaling(v),
        sliding_window=v.count("sliding_window"),
    )
    dtype = v.name("dtype", tuple(DTYPE_BYTES), "bf16")
    c = {k: v.count(k) for k in ("layers", "hidden", "heads", "ffn", "vocab")}
    kv_heads = v.count("kv_heads", c["heads"])
    head_dim = v.count("head_dim")
    experts = v.count("experts", 0, minimum=1 if v.has("experts") else 0)
    top_k = v.count("top_k", 2 if arch == "mixtral" else 0)
    if arch == "mixtral" and not v.has("experts"):
        v._err("E013", f"model {b.name.name!r} has arch mixtral and needs `experts`",
               b.name.span, "add `experts 8` (and optionally `top_k 2`)")
    if arch == "llama" and (v.has("experts") or v.has("top_k")):
        key = "experts" if v.has("experts") else "top_k"
        v._err("E014", f"`{key}` needs `arch mixtral`", v.span(key),
               "set `arch mixtral` for a mixture-of-experts model")
    if not v.ok:
        return None
    assert c["heads"] and c["hidden"] and c["layers"] and c["ffn"] and kv_heads
    if head_dim is None:
        if c["hidden"] % c["heads"]:
            v._err("E015", f"hidden ({c['hidden']}) is not divisible by heads ({c['heads']}), "
                   "so head_dim cannot be derived", v.span("hidden"), "set `head_dim` explicitly")
            return None
        head_dim = c["hidden"] // c["heads"]
    hf_family = hf_config.FAMILIES.get(features.family)
    if hf_family is not None and hf_family.hidden_multiple_of_heads and c["hidden"] % c["heads"]:
        others = ", ".join(t for t, f in hf_config.FAMILIES.items()
                           if f.arch == arch and not f.hidden_multiple_of_heads)
        v._err("E079", f"model {b.name.name!r} is family {features.family}, whose transformers "
               f"class requires hidden ({c['hidden']}) to be a multiple of heads ({c['heads']}), "
               "even with an explicit head_dim: no such checkpoint exists, and the reference "
               "could not be built", v.span("hidden"),
               f"make hidden a multiple of {c['heads']}, or name a family whose class allows it "
               f"({others})")
        return None
    if c["heads"] % kv_heads:
        v._err("E018", f"heads ({c['heads']}) is not a multiple of kv_heads ({kv_heads}): "
               "grouped-query attention shares each kv head among heads / kv_heads query heads",
               v.span("kv_heads"), f"kv_heads must divide {c['heads']}")
        return None
    if experts and (top_k or 0) > experts:
        v._err("E016", f"top_k ({top_k}) is larger than experts ({experts})", v.span("top_k"),
               f"top_k must be between 1 and {experts}")
        return None
    spans = {k: p.span for k, p in v.props.items()}
    return ModelSpec(b.name.name, arch, c["layers"], c["hidden"], c["heads"], kv_heads,  # type: ignore[arg-type]
                     head_dim, c["ffn"], dtype, c["vocab"], experts or 0, top_k or 0,
                     features, max_positions=v.count("max_positions"), span=b.name.span,
                     spans=spans)


def _rope_scaling(v: _Values) -> tuple[tuple[str, float | int | str], ...]:
    """ModelFeatures.rope_scaling from `rope_type` and its parameters (HF's names as keys)."""
    rope_type = v.name("rope_type", hf_config.ROPE_TYPES, "default")
    params = hf_config.ROPE_KEYS.get(rope_type or "", {})
    for key in sorted({k for keys in hf_config.ROPE_KEYS.values() for k in keys.values()}):
        if v.has(key) and key not in params.values():
            v._err("E078", f"`{key}` is a parameter of llama3 rope scaling, and this model's "
                   f"rope_type is {rope_type}", v.span(key), "add `rope_type llama3` or drop "
                   "the line")
    if not params:
        return ()
    pairs: list[tuple[str, float | int | str]] = [("rope_type", rope_type)]
    for hf_key, key in params.items():
        if not v.has(key):
            v._err("E078", f"rope_type {rope_type} needs `{key}`", v.span("rope_type"),
                   f"add a line `{key} N` (HF's {hf_key})")
            continue
        pairs.append((hf_key, v.count(key) if key == "rope_original_max_positions"
                      else v.number(key, 1.0)))  # type: ignore[arg-type]
    return tuple(sorted(pairs))


def _check_context(model: ModelSpec, workload: WorkloadSpec, v: _Values) -> None:
    """A sliding window shorter than the tokens a sequence attends to would change the output;
    planc's attention is full, so such a plan is refused rather than approximated. Positions
    past the model's trained length change no number planc computes, only their quality: a
    warning."""
    window = model.features.sliding_window
    tokens = workload.context + workload.generate if workload.phase == "decode" else workload.seq
    trained = model.max_positions
    if tokens is not None and trained is not None and tokens > trained:
        v.diags.warning("W071", f"workload {workload.name!r} reaches position {tokens:,}; model "
                        f"{model.name!r} was trained for {trained:,} positions",
                        v.props["workload"].value.span, "outputs past the trained length are "
                        "unreliable; shorten the sequences or use a long-context model",
                        (Related(model.spans.get("max_positions", model.span), "the trained "
                                 "length is set here"),) if model.span else ())
    if window is None or tokens is None or tokens <= window:
        return
    v._err("E077", f"model {model.name!r} has a sliding window of {window:,} tokens and workload "
           f"{workload.name!r} attends over {tokens:,}: planc's attention is full, so it would "
           "compute another model", v.props["workload"].value.span,
           f"keep sequences within {window:,} tokens (planc does not run sliding-window "
           "attention)", (Related(model.spans.get("sliding_window", model.span), "window set "
                                  "here"),) if model.span else ())


def _workload(b: ast.Block, diags: Diagnostics) -> WorkloadSpec | None:
    v = _Values(b, diags)
    phase = v.name("phase", PHASES, "prefill")
    batch, _ = v.count_or_hole("batch")
    seq, _ = v.count_or_hole("seq")
    context = v.count("context", 0)
    generate = v.count("generate", 0)
    if phase == "decode":
        for k in ("context", "generate"):
            if not v.has(k):
                v._err("E013", f"a decode workload needs `{k}`", b.name.span,
                       "e.g. `context 4096` and `generate 128`")
        if not v.has("seq"):
            seq = (context or 0) + (generate or 0)
    else:
        v.require_keys(REQUIRED["workload"])
    if not v.has("batch"):
        v.require_keys(("batch",))
    if not v.ok:
        return None
    spans = {k: p.span for k, p in v.props.items()}
    return WorkloadSpec(b.name.name, batch, seq, phase, context or 0, generate or 0,  # type: ignore[arg-type]
                        span=b.name.span, spans=spans)


def _ref(v: _Values, key: str, table: dict[str, Any], declared: set[str]) -> Any:
    name = v.name(key, None)
    if name is None:
        return None
    if name in table:
        return table[name]
    if name in declared:
        return None  # declared but invalid: its own error explains
    guess = did_you_mean(name, declared)
    v._err("E003", f"unknown {key} {name!r}", v.props[key].value.span,
           f"did you mean {guess!r}?" if guess else
           (f"declared {key}s: {one_of(declared)}" if declared else f"declare `{key} {name} {{ }}`"))
    return None


def _plan(b: ast.Block, path: str, models: dict[str, ModelSpec], clusters: dict[str, ClusterSpec],
          workloads: dict[str, WorkloadSpec], declared: dict[str, set[str]], diags: Diagnostics
          ) -> PlanSpec | None:
    v = _Values(b, diags)
    v.require_keys(REQUIRED["plan"])
    model = _ref(v, "model", models, declared["model"])
    cluster = _ref(v, "cluster", clusters, declared["cluster"])
    workload = _ref(v, "workload", workloads, declared["workload"])
    mesh: list[tuple[str, int | None]] = []
    axis_spans: dict[str, Span] = {}
    mesh_span = None
    shards: list[ShardSpec] = []
    sharded: dict[str, Span] = {}
    int8 = sparse = False
    compress_span = None
    requires: list[RequireSpec] = []
    objective = None
    for stmt in b.body:
        if isinstance(stmt, ast.Mesh):
            if mesh_span is not None:
                v._err("E011", "mesh is set twice", stmt.span, "keep one mesh line",
                       (Related(mesh_span, "first set here"),))
                continue
            mesh_span = stmt.span
            for ax in stmt.axes:
                if ax.name.name in axis_spans:
                    v._err("E030", f"mesh axis {ax.name.name!r} appears twice", ax.name.span,
                           "give each axis a distinct name",
                           (Related(axis_spans[ax.name.name], "first here"),))
                    continue
                axis_spans[ax.name.name] = ax.name.span
                size = None if isinstance(ax.size, ast.Hole) else v._integer(
                    f"size of axis {ax.name.name}", ax.size, 1)
                if size is None and not isinstance(ax.size, ast.Hole):
                    continue
                mesh.append((ax.name.name, size))
        elif isinstance(stmt, ast.Shard):
            sh = _shard(stmt, v, sharded)
            if sh is not None:
                shards.append(sh)
        elif isinstance(stmt, ast.Compress):
            words = " ".join(w.name for w in stmt.words)
            if words in ("weights int8", "int8"):
                int8 = True
            elif words in ("mlp sparse 2:4", "mlp 2:4"):
                sparse = True
            else:
                v._err("E031", f"unknown compression `{words}`", stmt.span,
                       "supported: `compress weights int8`, `compress mlp sparse 2:4`")
            compress_span = compress_span or stmt.span
        elif isinstance(stmt, ast.Require):
            r = _require(stmt, v)
            if r is not None:
                requires.append(r)
        elif isinstance(stmt, ast.Objective):
            allowed = OBJECTIVES[stmt.direction]
            if stmt.target.name not in allowed:
                guess = did_you_mean(stmt.target.name, allowed)
                v._err("E032", f"cannot {stmt.direction} {stmt.target.name!r}", stmt.target.span,
                       f"did you mean {guess!r}?" if guess else f"{stmt.direction} takes: "
                       f"{one_of(allowed)}")
            elif objective is not None:
                v._err("E011", "more than one objective", stmt.span, "keep one")
            else:
                objective = (stmt.direction, stmt.target.name)
    for sh in shards:
        for axis, sp in zip(sh.axes, sh.axis_spans):
            if axis not in axis_spans:
                guess = did_you_mean(axis, axis_spans)
                v._err("E033", f"shard uses axis {axis!r}, which is not in the mesh", sp,
                       f"did you mean {guess!r}?" if guess else
                       (f"mesh axes: {one_of(axis_spans)}" if axis_spans else
                        f"add it to the mesh: `mesh {axis}=N`"),
                       (Related(mesh_span, "mesh declared here"),) if mesh_span else ())
    if (workload is not None and model is not None and workload.phase == "decode"
            and not model.vocab):
        v._err("E017", f"workload {workload.name!r} decodes (generates tokens), so model "
               f"{model.name!r} needs a `vocab`", v.props["workload"].value.span,
               "add `vocab N` to the model block (the lm_head and embeddings use it)",
               (Related(model.span, "model declared here"),) if model.span else ())
    if workload is not None and model is not None:
        _check_context(model, workload, v)
    sizes = [size for _, size in mesh if size is not None]
    if sizes and math.prod(sizes) > MAX_DEVICES:
        v._err("E024", f"the mesh has {math.prod(sizes):,} devices; planc plans at most "
               f"{MAX_DEVICES:,}", mesh_span or b.name.span,  # type: ignore[arg-type]
               "is an axis size a typo? (sizes multiply to the device count)")
    if mesh_span is None and v.ok:
        v._err("E013", f"plan {b.name.name!r} needs a `mesh` line", b.name.span,
               "e.g. `mesh pp=2, tp=8` (sizes multiply to the device count)")
    if not v.ok or model is None or cluster is None or workload is None:
        return None
    return PlanSpec(b.name.name, path, model, cluster, workload, tuple(mesh), tuple(shards),
                    int8, sparse, tuple(requires), objective, span=b.name.span,
                    mesh_span=mesh_span, axis_spans=axis_spans, compress_span=compress_span)


def _shard(stmt: ast.Shard, v: _Values, sharded: dict[str, Span]) -> ShardSpec | None:
    ok = True
    for d in stmt.dims:
        if d.name not in DIMS:
            guess = did_you_mean(d.name, DIMS)
            v._err("E034", f"unknown dimension {d.name!r}", d.span,
                   f"did you mean {guess!r}?" if guess else f"dimensions: {', '.join(DIMS)}")
            ok = False
        elif d.name in sharded:
            v._err("E035", f"dimension {d.name!r} is sharded twice", d.span,
                   "shard each dimension once (list several axes on one line: "
                   f"`shard {d.name} over a, b`)", (Related(sharded[d.name], "first sharded here"),))
            ok = False
        else:
            sharded[d.name] = d.span
    seen_axes: set[str] = set()
    for a in stmt.axes:
        if a.name in seen_axes:
            v._err("E030", f"axis {a.name!r} is listed twice", a.span)
            ok = False
        seen_axes.add(a.name)
    dims = tuple(d.name for d in stmt.dims)
    micro: int | None = 1
    micro_span = stages_span = None
    fit = False
    attention = "local"
    stages: list[tuple[int, int]] = []
    for opt in stmt.options:
        if isinstance(opt, ast.Microbatches):
            if "layers" not in dims:
                v._err("E036", "`microbatches` goes with `shard layers over AXIS` (pipeline)",
                       opt.span, "move it to the line that shards layers")
                ok = False
            micro_span = opt.span
            micro = None if isinstance(opt.count, ast.Hole) else v._integer(
                "microbatches", opt.count, 1)
        elif isinstance(opt, ast.FitCache):
            if "layers" not in dims:
                v._err("E036", "`fit cache` goes with `shard layers over AXIS`", opt.span)
                ok = False
            fit = True
        elif isinstance(opt, ast.AttentionMode):
            if "seq" not in dims:
                v._err("E036", "`attention` goes with `shard seq over AXIS`", opt.span)
                ok = False
            if opt.mode.name == "local" and "seq" in dims:
                # each device would attend to its own chunk only: a different model, not a plan
                v._err("E038", "`attention local` cannot run on a split sequence: each device "
                       "would attend only to its own chunk of it", opt.mode.span,
                       "write `attention ring` (the default: K/V blocks travel round the axis) "
                       "or `attention gather` (all-gather K/V)")
                ok = False
            elif opt.mode.name not in ATTENTION_MODES:
                guess = did_you_mean(opt.mode.name, ATTENTION_MODES)
                v._err("E025", f"unknown attention mode {opt.mode.name!r}", opt.mode.span,
                       f"did you mean {guess!r}?" if guess else "ring or gather")
                ok = False
            else:
                attention = opt.mode.name
        elif isinstance(opt, ast.Stages):
            if "layers" not in dims:
                v._err("E036", "`stages` goes with `shard layers over AXIS`", opt.span)
                ok = False
            stages_span = opt.span
            for r in opt.ranges:
                first = v._integer("stage start", r.first, 0)
                last = v._integer("stage end", r.last, 0)
                if first is None or last is None:
                    ok = False
                elif last < first:
                    v._err("E037", f"stage [{first}..{last}] ends before it starts", r.span,
                           "write [FIRST..LAST] with FIRST <= LAST (both inclusive)")
                    ok = False
                else:
                    stages.append((first, last))
    if "seq" in dims and attention == "local":
        attention = "ring"  # the default; `attention local` was refused above (E038)
    if not ok:
        return None
    return ShardSpec(dims, tuple(a.name for a in stmt.axes), micro, fit, attention,  # type: ignore[arg-type]
                     tuple(stages), span=stmt.span, dim_spans=tuple(d.span for d in stmt.dims),
                     axis_spans=tuple(a.span for a in stmt.axes), microbatches_span=micro_span,
                     stages_span=stages_span)


def _require(stmt: ast.Require, v: _Values) -> RequireSpec | None:
    metric = stmt.metric.name
    if metric not in METRICS:
        guess = did_you_mean(metric, METRICS)
        v._err("E040", f"unknown metric {metric!r} in require", stmt.metric.span,
               f"did you mean {guess!r}?" if guess else f"metrics: {one_of(METRICS)}")
        return None
    q = stmt.quantity
    text = q.number.text + (f" {q.unit.name}" if q.unit else "")
    if q.unit is None:
        dim, scale = "count", Fraction(1)
    else:
        found = units.lookup(q.unit.name)
        if found is None:
            allowed = [u for d in METRICS[metric] for u in units.units_of(d)]
            guess = did_you_mean(q.unit.name, allowed)
            v._err("E027", f"unknown unit {q.unit.name!r}", q.unit.span,
                   f"did you mean {guess!r}?" if guess else f"units: {', '.join(allowed)}")
            return None
        dim, scale = found
    if dim not in METRICS[metric]:
        wanted = " or ".join(units.DIMENSION_WORDS[d] for d in METRICS[metric])
        v._err("E041", f"`require {metric}` takes {wanted}, not {text!r}", q.span)
        return None
    value = q.number.value * scale
    # No limit is below one byte, and a percentage under 0.01% of a device's memory (>= 1 MiB)
    # would round to a zero-byte limit.
    floors: dict[str, Fraction] = {"bytes": Fraction(1), "count": Fraction(1),
                                   "percent": Fraction(1, 100)}
    smallest = floors.get(dim, MIN_ANY)
    if value < smallest:
        v._err("E023", f"`require {metric}` needs a positive value"
               + (f" of at least {float(smallest):g}" if smallest >= MIN_ANY * 10 else "")
               + f", not {text!r}", q.span,
               "a zero or vanishing limit can never hold")
        return None
    if value > MAX_ANY:
        v._err("E024", f"`require {metric} {stmt.op} {text}` is larger than any real value",
               q.span, "is the exponent a typo?")
        return None
    lower_limits = {"throughput"}  # a bound refutes only claims in the direction it limits
    upper_limits = {"latency", "tpot", "ttft"}
    if (metric in lower_limits and stmt.op not in (">=", ">")) or (
            metric in upper_limits and stmt.op not in ("<=", "<")):
        want = ">=" if metric in lower_limits else "<="
        v._err("E042", f"`require {metric}` is a {'lower' if want == '>=' else 'upper'} limit: "
               f"write `require {metric} {want} {text}`", stmt.span,
               "planc checks performance claims against physical bounds, which only limit "
               "them in one direction")
        return None
    return RequireSpec(metric, stmt.op, q.number.value * scale, dim, text, span=stmt.span)
