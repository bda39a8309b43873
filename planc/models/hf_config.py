"""A Hugging Face config.json -> the lines of an explicit model block, with where each came from.

`model m from hf "ckpt"` (planc/compiler/resolve.py) and `planc import ckpt` (planc/cli.py) both
read a checkpoint's config.json here. The mapping is data: one `Family` entry per Hugging Face
`model_type` says which config keys carry its dimensions and features and which of its values
planc cannot honour. Everything a config asks for is either mapped to a model-block key, known
not to change the numbers (dropout, token ids, `use_cache`), or refused with a diagnostic that
names the field and its value: never approximated.

A checkpoint is data, never code: a config that asks for custom code (`auto_map`) is refused.
Only the json module reads the file (no transformers, no torch: the verifier installs without
them); every diagnostic points at the key's line and column in config.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planc.diagnostics import Diagnostics, Span

MAX_CONFIG_BYTES = 1 << 20  # real config.json files are 1-5 kB
ConfigValue = int | float | bool | str

# config dtype -> the plan's dtype name
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
ROPE_TYPES = ("default", "llama3")
# rope_parameters / rope_scaling key -> model-block key, for each rope type planc runs
ROPE_KEYS = {"llama3": {"factor": "rope_factor", "low_freq_factor": "rope_low_freq_factor",
                        "high_freq_factor": "rope_high_freq_factor",
                        "original_max_position_embeddings": "rope_original_max_positions"}}
# Keys that never change an inference forward pass's numbers (training settings, generation
# defaults, bookkeeping; pretraining_tp only splits the same matmuls). Any other key planc does
# not read gets a warning, so a new feature is never dropped silently.
INERT = {"architectures", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id",
         "initializer_range", "transformers_version", "use_cache",
         "output_router_logits", "router_aux_loss_coef", "router_jitter_noise", "_name_or_path",
         "pretraining_tp", "max_window_layers", "id2label", "label2id", "problem_type",
         "return_dict", "output_attentions", "output_hidden_states", "chunk_size_feed_forward",
         "is_encoder_decoder", "tie_encoder_decoder", "sep_token_id", "decoder_start_token_id",
         "num_labels", "tokenizer_class", "prefix", "task_specific_params"}


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model_type's config.json maps to a model block."""

    arch: str  # the structure planc lowers: dense llama-style or mixtral-style MoE
    ffn: str = "intermediate_size"  # the key of the (expert) MLP width
    experts: tuple[str, ...] = ()  # keys of the expert count, first found wins
    qkv_bias: str | bool = False  # the config key of the q/k/v bias, or the family's constant
    qk_norm: bool = False  # RMSNorm on q and k per head (Qwen3)
    norm_topk: str | bool = True  # the key of the top-k renormalisation, or the constant
    window_flag: str | None = None  # a key that must be true for sliding_window to apply
    # MoE tensor names: the layer's block, and its experts' gate, up and down projections
    moe_names: tuple[str, str, str, str] = ("mlp", "gate_proj", "up_proj", "down_proj")
    # Values of keys a config.json may leave out: the transformers config class's defaults.
    defaults: dict[str, Any] = field(default_factory=dict)
    # (key, value planc runs, why another value is refused): values the family's class offers
    # and planc's runtime does not implement.
    only: tuple[tuple[str, Any, str], ...] = ()
    unused: tuple[str, ...] = ()  # keys that cannot matter once `only` holds
    # The family's transformers config class refuses a hidden size that is not a multiple of
    # the heads, even with an explicit head_dim (LlamaConfig validates it; the others do not).
    hidden_multiple_of_heads: bool = False


_DENSE = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False}
FAMILIES: dict[str, Family] = {
    "llama": Family("llama", qkv_bias="attention_bias", defaults=_DENSE,
                    only=(("mlp_bias", False, "planc's MLP has no biases"),),
                    hidden_multiple_of_heads=True),
    "mistral": Family("llama", defaults={**_DENSE, "num_key_value_heads": 8}),
    "qwen2": Family("llama", qkv_bias=True, window_flag="use_sliding_window", defaults=_DENSE),
    "qwen3": Family("llama", qkv_bias="attention_bias", qk_norm=True,
                    window_flag="use_sliding_window", defaults=_DENSE),
    "mixtral": Family("mixtral", experts=("num_local_experts",),
                      moe_names=("block_sparse_moe", "w1", "w3", "w2"),
                      defaults={**_DENSE, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
                                "num_key_value_heads": 8, "num_experts_per_tok": 2}),
    "qwen3_moe": Family(
        "mixtral", ffn="moe_intermediate_size", experts=("num_experts", "num_local_experts"),
        qkv_bias="attention_bias", qk_norm=True, norm_topk="norm_topk_prob",
        window_flag="use_sliding_window",
        defaults={**_DENSE, "norm_topk_prob": False, "num_experts_per_tok": 8},
        only=(("decoder_sparse_step", 1, "every layer of a planc MoE model is sparse"),
              ("mlp_only_layers", [], "every layer of a planc MoE model is sparse")),
        unused=("intermediate_size",)),  # the width of the dense layers refused above
}
# Keys of families planc does not run, and what they mean: a config holding one is refused even
# under a known model_type (a fine-tune that added shared experts or MLA keeps its model_type).
UNSUPPORTED = {
    "kv_lora_rank": "multi-head latent attention (MLA)",
    "q_lora_rank": "multi-head latent attention (MLA)",
    "shared_expert_intermediate_size": "shared experts",
    "n_shared_experts": "shared experts",
    "num_shared_experts": "shared experts",
    "partial_rotary_factor": "RoPE on part of each head",
    "attn_logit_softcapping": "attention logit soft-capping",
    "final_logit_softcapping": "final logit soft-capping",
    "quantization_config": "a quantized checkpoint",
    "moe_layer_freq": "dense layers between MoE layers",
    "first_k_dense_replace": "dense layers before the MoE layers",
}


@dataclass(frozen=True)
class HfModel:
    """A config.json read: model-block key -> (value, where in config.json it came from)."""

    path: Path  # the config.json read
    model_type: str
    values: dict[str, tuple[ConfigValue, Span]]


def config_path(written: str, plan_file: str) -> Path:
    """The config.json a `from hf "..."` names: relative to the plan file's directory."""
    p = Path(written)
    if not p.is_absolute():
        p = Path(plan_file).parent / p
    return p / "config.json" if p.is_dir() else p


def read(written: str, plan_file: str, where: Span | None, diags: Diagnostics,
         sources: dict[str, str] | None = None) -> HfModel | None:
    """Read and map the config.json named `written` (as written in the plan, at `where`);
    its text goes into `sources` so diagnostics located in it can show the line."""
    path = config_path(written, plan_file)
    text = _read_text(path, written, where, diags)
    if text is None:
        return None
    shown = str(path)
    if sources is not None:
        sources[shown] = text
    data = _parse(text, shown, diags)
    if data is None:
        return None
    spans = _key_spans(text, shown)
    return _map(data, spans, path, diags)


def _read_text(path: Path, written: str, where: Span | None, diags: Diagnostics
               ) -> str | None:
    if not path.exists():
        diags.error("E070", f'no config.json at "{written}" (looked for {path})', where,
                    "give a checkpoint directory or its config.json (in a plan, relative to the "
                    "plan file)")
        return None
    if not path.is_file():
        diags.error("E070", f'"{written}" is not a file', where, "give a checkpoint directory "
                    "or its config.json")
        return None
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            diags.error("E070", f'"{written}" is {size:,} bytes; a config.json is a few kB '
                        f"(the limit is {MAX_CONFIG_BYTES:,})", where,
                        "name the checkpoint's config.json, not a weights file")
            return None
        data = path.read_bytes()
    except OSError as e:
        diags.error("E070", f'cannot read "{written}": {e.strerror}', where)
        return None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        diags.error("E071", f"{path} is not UTF-8 (byte 0x{data[e.start]:02x})",
                    Span.point(str(path), line, col), "config.json is JSON text in UTF-8")
        return None


def _refuse_constant(name: str) -> float:
    raise ValueError(name)


def _parse(text: str, shown: str, diags: Diagnostics) -> dict[str, Any] | None:
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        diags.error("E071", f"{shown} is not valid JSON: {e.msg}",
                    Span.point(shown, e.lineno, e.colno), "fix the JSON (a trailing comma or a "
                    "missing quote is the usual cause)")
        return None
    except ValueError as e:  # NaN, Infinity: valid to Python's json, not to JSON
        diags.error("E071", f"{shown} holds {e}, which is not a JSON number",
                    Span.point(shown, 1, 1), "write a finite number")
        return None
    except RecursionError:
        diags.error("E071", f"{shown} is nested too deeply to be a config", Span.point(shown, 1, 1))
        return None
    if not isinstance(data, dict):
        diags.error("E071", f"{shown} holds a JSON {type(data).__name__}, not an object",
                    Span.point(shown, 1, 1), "a config.json is one JSON object of fields")
        return None
    return data


def _key_spans(text: str, shown: str) -> dict[str, Span]:
    """Where each top-level key of a valid JSON object is, from its key to the end of its value.

    json gives no positions; this walks the top level with json's own string and value
    scanners, so it agrees with json.loads on every valid document."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def at(offset: int) -> tuple[int, int]:
        lo, hi = 0, len(starts) - 1
        while lo < hi:  # the last line start at or before offset
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if starts[mid] <= offset else (lo, mid - 1)
        return lo + 1, offset - starts[lo] + 1

    def ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    decoder = json.JSONDecoder()
    out: dict[str, Span] = {}
    i = ws(0) + 1  # past '{'
    while True:
        i = ws(i)
        if text[i] == "}":
            return out
        start = i
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = ws(ws(i) + 1)  # past ':'
        _, i = decoder.raw_decode(text, i)
        (l0, c0), (l1, c1) = at(start), at(i)
        out[key] = Span(shown, l0, c0, l1, c1)  # a repeated key: the last wins, as in json
        i = ws(i)
        if text[i] == ",":
            i += 1


# ---------------------------------------------------------------------------------------------
# Mapping


def shown(value: Any, limit: int = 60) -> str:
    """A JSON value for a message, cut short: a config value can be a whole nested object."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Mapper:
    def __init__(self, data: dict[str, Any], spans: dict[str, Span], top: Span,
                 diags: Diagnostics):
        self.data, self.spans, self.top, self.diags = data, spans, top, diags
        self.values: dict[str, tuple[ConfigValue, Span]] = {}
        self.read: set[str] = set()  # config keys looked at, for the unread-key warning
        self.ok = True

    def span(self, key: str) -> Span:
        return self.spans.get(key, self.top)

    def err(self, code: str, msg: str, key: str, hint: str | None = None) -> None:
        self.ok = False
        self.diags.error(code, msg, self.span(key), hint)

    def get(self, key: str, kind: type | tuple[type, ...], defaults: dict[str, Any],
            required: bool = True) -> Any:
        """The value of `key` checked against a JSON type; the family default when absent."""
        self.read.add(key)
        if key not in self.data or self.data[key] is None:
            if key in defaults:
                return defaults[key]
            if required:
                self.err("E075", f"config.json has no `{key}`", key,
                         f"add \"{key}\" to config.json, or set the value in the model block")
            return None
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        bad = isinstance(value, bool) and bool not in kinds  # JSON true is not a number
        if bad or not isinstance(value, kinds):
            want = " or ".join({int: "a whole number", float: "a number", bool: "true or false",
                                str: "a string", dict: "an object", list: "a list"}[k]
                               for k in kinds)
            self.err("E076", f"config.json `{key}` is {shown(value)}; it must be {want}", key)
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.err("E076", f"config.json `{key}` is not finite", key)
            return None
        return value

    def put(self, plan_key: str, value: ConfigValue | None, key: str) -> None:
        if value is not None:
            self.values[plan_key] = (value, self.span(key))


def _map(data: dict[str, Any], spans: dict[str, Span], path: Path, diags: Diagnostics
         ) -> HfModel | None:
    m = _Mapper(data, spans, Span.point(str(path), 1, 1), diags)
    if "auto_map" in data or data.get("trust_remote_code"):
        key = "auto_map" if "auto_map" in data else "trust_remote_code"
        m.err("E072", f"config.json asks for custom code (`{key}`); planc never runs code from "
              "a checkpoint", key, "use a checkpoint of a family transformers ships "
              f"({', '.join(FAMILIES)}), or write the model block by hand")
        return None
    model_type = m.get("model_type", str, {})
    if model_type is None:
        return None
    family = FAMILIES.get(model_type)
    if family is None:
        from planc.diagnostics import did_you_mean

        guess = did_you_mean(model_type, FAMILIES)
        m.err("E073", f"model_type {model_type!r} is not a family planc runs", "model_type",
              (f"did you mean {guess!r}? " if guess else "") + f"families: {', '.join(FAMILIES)}"
              " (docs/models.md says what each needs)")
        return None
    _refusals(m, family)
    d = family.defaults
    m.put("family", model_type, "model_type")
    for plan_key, key in (("layers", "num_hidden_layers"), ("hidden", "hidden_size"),
                          ("ffn", family.ffn), ("vocab", "vocab_size")):
        m.put(plan_key, m.get(key, int, {}), key)
    heads = m.get("num_attention_heads", int, {})
    m.put("heads", heads, "num_attention_heads")
    m.put("kv_heads", m.get("num_key_value_heads", int, {"num_key_value_heads": heads, **d}),
          "num_key_value_heads")
    m.put("head_dim", m.get("head_dim", int, {}, required=False), "head_dim")
    if family.experts:
        key = next((k for k in family.experts if k in data), family.experts[0])
        m.put("experts", m.get(key, int, d), key)
        m.put("top_k", m.get("num_experts_per_tok", int, d), "num_experts_per_tok")
    _dtype(m)
    _rope(m, d)
    m.put("norm_eps", m.get("rms_norm_eps", (float, int), d), "rms_norm_eps")
    for plan_key, source in (("qkv_bias", family.qkv_bias), ("norm_topk", family.norm_topk)):
        if plan_key == "norm_topk" and not family.experts:
            continue
        if isinstance(source, str):  # a config key; absent means False in every family class
            m.put(plan_key, m.get(source, bool, {source: False, **d}), source)
        else:  # fixed by the family (Qwen2's q/k/v always have biases)
            m.put(plan_key, source, "model_type")
    m.put("qk_norm", family.qk_norm, "model_type")
    m.put("tie_embeddings", m.get("tie_word_embeddings", bool, d), "tie_word_embeddings")
    _window(m, family)
    m.put("max_positions", m.get("max_position_embeddings", int, {}, required=False),
          "max_position_embeddings")
    if not m.ok:
        return None
    for key in sorted(set(data) - m.read - INERT - set(UNSUPPORTED)):
        diags.warning("W070", f"config.json `{key}` is not read by planc", m.span(key),
                      "if it changes the model's numbers, planc does not honour it: check "
                      "docs/models.md")
    return HfModel(path, model_type, m.values)


def _refusals(m: _Mapper, family: Family) -> None:
    m.read |= {"auto_map", "trust_remote_code", "hidden_act", "layer_types",
               *(k for k, _, _ in family.only), *family.unused}
    if family.window_flag:
        m.read.add(family.window_flag)
    act = m.data.get("hidden_act", "silu")
    if act != "silu":
        m.err("E074", f"hidden_act {shown(act)} is not supported: planc's MLP is SwiGLU "
              "(silu)", "hidden_act", "docs/models.md lists what planc runs")
    for key, meaning in UNSUPPORTED.items():
        if m.data.get(key) not in (None, 0, False, [], {}):
            m.err("E074", f"`{key}` {shown(m.data[key])}: {meaning} is not supported",
                  key, "docs/models.md lists what planc runs")
    for key, allowed, why in family.only:
        if key in m.data and m.data[key] not in (allowed, None):
            m.err("E074", f"`{key}` {shown(m.data[key])} is not supported ({why}); planc "
                  f"runs {json.dumps(allowed)}", key, "docs/models.md lists what planc runs")
    types = m.data.get("layer_types") or []
    odd = sorted({t for t in types if t not in ("full_attention", "sliding_attention")}
                 if isinstance(types, list) else {str(types)})
    if odd:
        m.err("E074", f"layer_types {', '.join(map(str, odd))} are not supported", "layer_types",
              "planc runs full (and sliding-window) attention")


def _dtype(m: _Mapper) -> None:
    m.read |= {"dtype", "torch_dtype"}
    key = "dtype" if m.data.get("dtype") is not None else "torch_dtype"
    name = m.get(key, str, {}, required=False)
    if name is None:
        return  # no dtype in the config: the block's `dtype` line (or resolve) decides
    if name not in DTYPES:
        m.err("E074", f"{key} {shown(name)} is not supported", key,
              f"planc runs {', '.join(DTYPES)}; set `dtype` in the model block for a what-if")
        return
    m.put("dtype", DTYPES[name], key)


def _rope(m: _Mapper, defaults: dict[str, Any]) -> None:
    """rope_theta and scaling: transformers 5's `rope_parameters` or 4's `rope_theta` +
    `rope_scaling` (whose older spelling of `rope_type` is `type`)."""
    m.read |= {"rope_parameters", "rope_scaling", "rope_theta"}
    key = "rope_parameters" if m.data.get("rope_parameters") is not None else "rope_scaling"
    params = m.get(key, dict, {}, required=False) or {}
    theta_key = "rope_parameters" if "rope_theta" in params else "rope_theta"
    theta = params.get("rope_theta") if "rope_theta" in params else m.get(
        "rope_theta", (float, int), defaults)
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0:
        m.err("E076", f"rope_theta {shown(theta)} must be a positive number", theta_key)
        return
    m.put("rope_theta", float(theta), theta_key)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        m.err("E074", f"rope_type {shown(rope_type)} is not supported", key,
              f"planc runs rope types {', '.join(ROPE_TYPES)}")
        return
    if rope_type == "default":
        return
    m.put("rope_type", rope_type, key)
    for hf_key, plan_key in ROPE_KEYS[rope_type].items():
        value = params.get(hf_key)
        integral = plan_key == "rope_original_max_positions"
        ok = isinstance(value, int if integral else (int, float)) and not isinstance(
            value, bool) and value > 0
        if not ok:
            m.err("E076" if hf_key in params else "E075", f"{key}.{hf_key} is "
                  f"{shown(value) if hf_key in params else 'missing'}; {rope_type} rope "
                  f"scaling needs a positive {'whole ' if integral else ''}number", key)
            continue
        m.put(plan_key, value if integral else float(value), key)  # type: ignore[arg-type]


def _window(m: _Mapper, family: Family) -> None:
    window = m.get("sliding_window", int, {}, required=False)
    if window is None:
        return
    if family.window_flag is not None and not m.data.get(family.window_flag, False):
        return  # the family's class ignores the window unless its flag is on
    m.put("sliding_window", window, "sliding_window")


# ---------------------------------------------------------------------------------------------
# The explicit block (`planc import`)

ORDER = ("family", "layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab", "dtype",
         "experts", "top_k", "rope_theta", "rope_type", "rope_factor", "rope_low_freq_factor",
         "rope_high_freq_factor", "rope_original_max_positions", "norm_eps", "qkv_bias",
         "qk_norm", "tie_embeddings", "norm_topk", "sliding_window", "max_positions")


def plan_value(value: ConfigValue) -> str:
    """A config value as a model-block value: true/false, a name, or a plan number."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def model_block(model: HfModel, name: str, written: str) -> str:
    """The explicit model block equivalent to `model NAME from hf "written"`."""
    keys = sorted(model.values, key=ORDER.index)
    width = max(map(len, keys))
    lines = [f"# {written}: model_type {model.model_type}", f"model {name} {{"]
    lines += [f"  {k.ljust(width)} {plan_value(model.values[k][0])}" for k in keys]
    return "\n".join(lines + ["}"]) + "\n"
