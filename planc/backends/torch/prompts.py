"""Prompts in, text out, for `planc generate` and the emitted decode program: reading prompts
(`--prompt TEXT` or a JSONL file of {"prompt": ...} lines), the checkpoint's own tokenizer,
every check a request must pass before a rank starts, and the JSONL records of the results.

One `GenerateRequest` is what the ranks run: token ids of every prompt, the stop tokens and the
sampling options, all plain data (rank 0 builds it and broadcasts it; `planc generate` builds
the same one first, so bad input is refused before anything is launched).

Errors are PlancErrors with R02x codes (exit 1): a prompts file's problems carry its line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planc.backends.torch.preflight import checkpoint_dir
from planc.backends.torch.runtime.config import RunConfig
from planc.diagnostics import Diagnostic, Diagnostics, PlancError, Span


@dataclass(frozen=True)
class GenerateOptions:
    max_new_tokens: int | None = None  # None: the plan's `generate`
    temperature: float = 0.0  # 0: greedy (argmax), as Hugging Face's do_sample=False
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class GenerateRequest:
    """Everything the ranks need: prompts (text and ids), stop tokens, options."""

    texts: list[str]
    ids: list[list[int]]
    eos: list[int]  # a sequence stops after generating any of these
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int


def add_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """The prompt and sampling options of `planc generate` and of an emitted decode program
    (where they are optional: without a prompt it times random ones)."""
    g = parser.add_argument_group("prompts in, text out")
    src = g.add_mutually_exclusive_group(required=required)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", metavar="FILE.jsonl",
                     help='prompts, one {"prompt": "..."} object per line')
    g.add_argument("-o", "--output", metavar="OUT.jsonl",
                   help='write {"prompt", "text", "tokens", "finish_reason"} lines here '
                        "(default: the texts on stdout)")
    g.add_argument("--max-new-tokens", type=int, help="default: the plan's generate")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")


def options(args: argparse.Namespace) -> GenerateOptions:
    return GenerateOptions(args.max_new_tokens, args.temperature, args.top_p, args.seed)


def _fail(code: str, message: str, hint: str, span: Span | None = None) -> PlancError:
    return PlancError(Diagnostic(code, message, span, "error", hint))


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[tuple[str, Span | None]]:
    """(text, where it came from) of each prompt: --prompt, or each non-blank line of a JSONL
    file, an object with a "prompt" string (other keys are ignored)."""
    if prompt is not None:
        return [(prompt, None)]
    assert prompts_file is not None
    try:
        lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail("R024", f"cannot read prompts file {prompts_file!r}: {e}",
                    "give a UTF-8 JSONL file, one {\"prompt\": \"...\"} object per line") from None
    out: list[tuple[str, Span | None]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        span = Span(prompts_file, n, 1, n, len(line) + 1)
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail("R024", f"line {n} of {prompts_file} is not JSON: {e.msg} "
                        f"(column {e.colno})", 'write one object per line: {"prompt": "..."}',
                        Span.point(prompts_file, n, e.colno)) from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise _fail("R024", f'line {n} of {prompts_file} has no "prompt" string',
                        'write one object per line: {"prompt": "..."}', span)
        out.append((item["prompt"], span))
    if not out:
        raise _fail("R024", f"prompts file {prompts_file} holds no prompts",
                    'write one object per line: {"prompt": "..."}')
    return out


def load_tokenizer(weights: str) -> Any:
    """The checkpoint's own tokenizer (AutoTokenizer, local files only, no custom code)."""
    from planc.backends.torch.reference import _quiet_transformers

    _quiet_transformers()
    from transformers import AutoTokenizer

    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    hint = ("save the checkpoint's tokenizer beside it "
            "(tokenizer.save_pretrained(DIR)), or give the directory that has it")
    if not any((Path(weights) / f).is_file() for f in files):
        raise _fail("R020", f"no tokenizer in {weights} (none of {', '.join(files)})", hint)
    try:
        return AutoTokenizer.from_pretrained(weights, local_files_only=True,
                                             trust_remote_code=False)
    # transformers raises many kinds; any of them means no tokenizer (reported as R020)
    except Exception as e:  # noqa: BLE001 - a boundary that reports the error
        raise _fail("R020", f"cannot load the tokenizer in {weights}: {type(e).__name__}: {e}",
                    hint) from None


def eos_ids(weights: str, tokenizer: Any) -> list[int]:
    """The stop tokens Hugging Face generate uses: generation_config.json's eos_token_id, else
    config.json's, else the tokenizer's."""
    for name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((Path(weights) / name).read_text()).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            return sorted(set(value))
    return [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]


def _check_options(cfg: RunConfig, opts: GenerateOptions) -> int:
    new = cfg.generate if opts.max_new_tokens is None else opts.max_new_tokens
    if not 1 <= new <= cfg.generate:
        raise _fail("R025", f"--max-new-tokens {new} is outside 1..{cfg.generate}: the plan's "
                    f"KV cache holds context {cfg.context} + generate {cfg.generate} positions",
                    "ask for fewer tokens, or raise `generate` in the plan's workload")
    if not opts.temperature >= 0:
        raise _fail("R025", f"--temperature {opts.temperature} is negative",
                    "0 is greedy; 0.7 to 1.0 samples")
    if not 0 < opts.top_p <= 1:
        raise _fail("R025", f"--top-p {opts.top_p} is outside (0, 1]",
                    "1 keeps every token; 0.9 keeps the most likely 90% of the mass")
    return new


def prepare(
    cfg: RunConfig,
    weights: str | None,
    prompt: str | None,
    prompts_file: str | None,
    opts: GenerateOptions,
) -> GenerateRequest:
    """The request for these prompts on this plan, or a PlancError saying what is wrong."""
    if cfg.phase != "decode":
        raise _fail("R023", f"the plan's workload is {cfg.phase}, not decode: generation needs "
                    "`phase decode`, with `context` (the longest prompt) and `generate` (the most "
                    "new tokens)",
                    "generate with a decode plan (specs/local/decode_tp2.plan is one)")
    new = _check_options(cfg, opts)
    if weights is None:
        raise _fail("R020", "generation needs --weights DIR: a checkpoint with its tokenizer",
                    "scripts/make_tiny_checkpoint.py writes a tiny one")
    where_weights = Diagnostics()  # a missing directory is that, not a missing tokenizer
    if checkpoint_dir(weights, where_weights) is None:
        raise PlancError(where_weights.items[0])
    prompts = read_prompts(prompt, prompts_file)
    tokenizer = load_tokenizer(weights)
    ids = []
    for i, (text, span) in enumerate(prompts):
        where = "--prompt" if span is None else f"prompt {i + 1} (line {span.line})"
        if not text:
            raise _fail("R021", f"{where} is empty", "give some text to continue", span)
        row = [int(t) for t in tokenizer(text)["input_ids"]]
        if not row:
            raise _fail("R021", f"{where} has no tokens", "give some text to continue", span)
        if len(row) > cfg.context:
            raise _fail("R022", f"{where} is {len(row)} tokens; the plan's context is "
                        f"{cfg.context}", "shorten the prompt, or raise `context` in the plan's "
                        "workload (planc check proves the larger KV cache fits)", span)
        if cfg.model.vocab is not None and max(row) >= cfg.model.vocab:
            raise _fail("R020", f"the tokenizer in {weights} gives id {max(row)} for {where}; "
                        f"the plan's vocab is {cfg.model.vocab}",
                        "use the tokenizer saved with this checkpoint")
        ids.append(row)
    return GenerateRequest([t for t, _ in prompts], ids, eos_ids(weights, tokenizer), new,
                           opts.temperature, opts.top_p, opts.seed)


def records(request: GenerateRequest, generated: list[list[int]], tokenizer: Any
            ) -> list[dict[str, Any]]:
    """One JSONL record per prompt: tokens up to and including the first stop token,
    finish_reason "stop" (a stop token) or "length" (max_new_tokens)."""
    out = []
    stop = set(request.eos)
    for text, row in zip(request.texts, generated):
        row = row[: request.max_new_tokens]
        end = next((i + 1 for i, t in enumerate(row) if t in stop), None)
        tokens = row if end is None else row[:end]
        out.append({
            "prompt": text,
            "text": tokenizer.decode(tokens, skip_special_tokens=True),
            "tokens": tokens,
            "finish_reason": "length" if end is None else "stop",
        })  # fmt: skip
    return out
