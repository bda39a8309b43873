"""Fuzzing: planc never crashes or hangs, whatever the input; it answers with diagnostics.

Two sources of input: sentences of planc's own grammar (hypothesis' `from_lark`, so the cases
reach the resolver, the structure checks and the verifier, not only the lexer), and mutations
of every valid spec (truncated, tokens or lines deleted, duplicated or swapped), which are
almost-right files like the ones people write. Each case runs the whole `planc check` in this
process and must end with exit 0, 1 or 3: 101 (an internal error) is a crash. Each case has a
hard time limit, so a hang fails instead of blocking CI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

from planc.compiler.resolve import METRICS
from planc.compiler.spec import DIMS
from planc.grammar.parse import parser
from tests.reliability.common import SPECS, planc, time_limit

CASE_LIMIT_S = 20.0  # a z3 query has its own 1 s timeout: this only catches a real hang
SOLVER = ("--timeout-ms", "1000", "--rlimit", "2000000")

def fuzz(examples: int) -> settings:
    # derandomize: CI sees the same cases every run (a failure reproduces); database=None:
    # nothing is written to .hypothesis/
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])
TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_]*|[0-9][0-9_.]*(?:[eE][+-]?[0-9]+)?|\S")


def check_never_crashes(text: str, tmp: Path, fmt: str = "json") -> int:
    f = tmp / "case.plan"
    f.write_text(text, encoding="utf-8", newline="")
    with time_limit(CASE_LIMIT_S, f"planc check of {text[:200]!r}"):
        r = planc("check", f, "--format", fmt, *SOLVER)
    assert r.code in (0, 1, 3), (r.code, text, r.text[-2000:])
    if fmt == "json":
        doc = json.loads(r.out)  # the document is whole even for the worst input
        if r.code == 1:
            assert doc["diagnostics"] or any(p["status"] == "violated" for p in doc["plans"])
    return r.code


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# Every terminal is drawn padded with spaces (whitespace is ignored by the grammar), so the
# generated tokens lex as the tokens they were drawn as, and the values come from the words and
# numbers planc knows: generated files get past the parser into the resolver and the checks.
WORDS = ["m", "c", "w", "p", "tp", "pp", "dp", "ep", "sp", "H100", "CPU", "d", "layers",
         "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab", "batch", "seq", "experts",
         "top_k", "llama", "mixtral", "memory", "cache", "device", "model", "cluster",
         "workload", "arch", "intra", "inter", "ring", "gather", "decode", "prefill", "phase",
         "bf16", "fp32", "int8", "weights", "mlp", "sparse", "throughput", "latency", "time",
         "node", "link", "context", "generate", "compute", "bandwidth", "reserve", "nan"]
NUMBERS = ["0", "1", "2", "3", "4", "8", "16", "64", "128", "4096", "1.5", "0.5", "1e3",
           "1e309", "1_000", "2e-9", "1e400"]
UNITS = ["GB", "GiB", "B", "KB", "TB/s", "GB/s", "TFLOPS", "%", "ms", "s", "tokens/s", "Gb", "K"]


def _padded(values: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from([f" {v} " for v in values])


def _explicit(holes: bool = True) -> dict[str, st.SearchStrategy[str]]:
    out: dict[str, st.SearchStrategy[str]] = {
        "NAME": _padded(WORDS), "NUMBER": _padded(NUMBERS), "UNIT": _padded(UNITS),
        "RATIO": _padded(["2:4", "1:2", "0:0"]), "WS": st.just(" "), "COMMENT": st.just(" "),
        "_NEWLINE": st.sampled_from(["\n", "\r\n", "\r"]),
        "KIND": _padded(["device", "cluster", "model", "workload", "plan"]),
        "COMPARE": _padded(["<=", ">=", "==", "<", ">"]),
        "OBJECTIVE": _padded(["minimize", "maximize"]),
    }
    for t in parser().terminals:
        if t.name not in out and type(t.pattern).__name__ == "PatternStr":
            out[t.name] = st.just(f" {t.pattern.value} ")
    if not holes:  # a size instead: see WORKLOADS on why holes stay out of plans
        out["HOLE"] = _padded(["2"])
    return out


def _reachable_terminals(start: str) -> set[str]:
    """Terminals a rule can produce (from_lark refuses explicit strategies for others)."""
    rules = parser().rules
    seen, todo, terms = {start}, [start], set(parser().ignore_tokens)
    while todo:
        origin = todo.pop()
        for r in rules:
            if r.origin.name != origin:
                continue
            for sym in r.expansion:
                if sym.is_term:
                    terms.add(sym.name)
                elif sym.name not in seen:
                    seen.add(sym.name)
                    todo.append(sym.name)
    return terms


def _from_grammar(start: str, holes: bool = True) -> st.SearchStrategy[str]:
    ok = _reachable_terminals(start)
    return from_lark(parser(), start=start,
                     explicit={k: v for k, v in _explicit(holes).items() if k in ok})


grammar_files = _from_grammar("start")
# Statements of a plan, spliced into a valid plan: they reach lowering and the verifier.
statements = st.one_of(*(_from_grammar(rule, holes=False)
                         for rule in ("mesh", "shard", "compress", "require", "objective")))
PLAN_HEAD = """model m {
  layers 4
  hidden 64
  heads 8
  kv_heads 4
  ffn 128
  vocab 256
}
cluster c {
  device CPU x 8
}
workload w {
  batch 8
  seq 16
}
plan p {
  model m
  cluster c
  workload w
"""


AXES = ["tp", "pp", "dp", "ep", "sp", "hd"]
MODELS = {
    "llama": "model m {\n  layers 4\n  hidden 64\n  heads 8\n  kv_heads 4\n  ffn 128\n"
             "  vocab 256\n}\n",
    "mixtral": "model m {\n  arch mixtral\n  layers 4\n  hidden 64\n  heads 8\n  kv_heads 4\n"
               "  ffn 128\n  vocab 256\n  experts 4\n  top_k 2\n}\n",
}
WORKLOADS = ["workload w {\n  batch 8\n  seq 16\n}\n",
             "workload w {\n  phase decode\n  batch 8\n  context 16\n  generate 4\n}\n"]
# No holes (`?`) here: an infeasible plan with holes makes synthesis look for the nearest
# feasible device count for minutes (test_infeasible_holes_are_answered_in_bounded_time).
CLUSTERS = ["cluster c {\n  device CPU x 8\n}\n", "cluster c {\n  device H100 x 16\n  node 8\n}\n"]
mesh_lines = st.lists(st.tuples(st.sampled_from(AXES), st.sampled_from(["1", "2", "4"])),
                      min_size=1, max_size=3, unique_by=lambda t: t[0]).map(
    lambda axes: "mesh " + ", ".join(f"{a}={n}" for a, n in axes))
shard_lines = st.builds(
    lambda dims, axes, opt: f"shard {', '.join(dims)} over {', '.join(axes)}{opt}",
    st.lists(st.sampled_from(list(DIMS)), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from(AXES), min_size=1, max_size=2, unique=True),
    st.sampled_from(["", " microbatches 2", " microbatches 4", " fit cache", " attention ring",
                     " attention gather", " stages [0..0], [1..3]"]))
require_lines = st.builds(
    lambda metric, op, value: f"require {metric} {op} {value}", st.sampled_from(sorted(METRICS)),
    st.sampled_from(["<=", ">=", "<", ">", "=="]),
    st.sampled_from(["90%", "1 GB", "100 tokens/s", "1 ms", "4", "1e9", "0.01%", "1 B"]))
other_lines = st.sampled_from(["compress weights int8", "compress mlp sparse 2:4",
                               "minimize time", "minimize memory", "minimize devices",
                               "maximize batch", "maximize seq"])
structured_plans = st.builds(
    lambda model, cluster, workload, lines: model + cluster + workload
    + "plan p {\n  model m\n  cluster c\n  workload w\n" + "".join(f"  {x}\n" for x in lines)
    + "}\n",
    st.sampled_from(sorted(MODELS.values())), st.sampled_from(CLUSTERS),
    st.sampled_from(WORKLOADS),
    st.tuples(mesh_lines, st.lists(st.one_of(shard_lines, shard_lines, require_lines,
                                             other_lines), max_size=4)).map(
        lambda t: [t[0], *t[1]]))


@pytest.mark.slow
@fuzz(150)
@given(text=structured_plans)
def test_generated_plans_never_crash_the_checker(text: str, tmp: Path) -> None:
    check_never_crashes(text, tmp)


@pytest.mark.slow
@fuzz(500)
@given(text=grammar_files)
def test_sentences_of_the_grammar_never_crash_the_checker(text: str, tmp: Path) -> None:
    check_never_crashes(text, tmp)


@pytest.mark.slow
@fuzz(250)
@given(body=st.lists(statements, min_size=1, max_size=4),
       mesh=st.sampled_from(["", "  mesh tp=2\n", "  mesh pp=2, tp=4\n", "  mesh ep=2\n"]))
def test_generated_plan_statements_never_crash_the_checker(body: list[str], mesh: str,
                                                           tmp: Path) -> None:
    check_never_crashes(PLAN_HEAD + mesh + "".join(f"  {b}\n" for b in body) + "}\n", tmp)


SOURCES = [p.read_text(encoding="utf-8") for p in SPECS]


def mutate(text: str, data: st.DataObject) -> str:
    tokens = TOKEN.findall(text)
    lines = text.split("\n")
    if not tokens:
        return text + data.draw(st.sampled_from(["}", "plan p {", "\n", "x"]))
    kind = data.draw(st.sampled_from(["truncate", "delete_token", "duplicate_token",
                                      "swap_tokens", "delete_line", "duplicate_line",
                                      "swap_lines", "replace_token"]))
    if kind == "truncate":
        return text[: data.draw(st.integers(0, len(text)))]
    if kind.endswith("line"):
        i = data.draw(st.integers(0, len(lines) - 1))
        if kind == "delete_line":
            del lines[i]
        else:
            lines.insert(i, lines[i])
        return "\n".join(lines)
    if kind == "swap_lines":
        i, j = (data.draw(st.integers(0, len(lines) - 1)) for _ in range(2))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    i = data.draw(st.integers(0, len(tokens) - 1))
    if kind == "delete_token":
        del tokens[i]
    elif kind == "duplicate_token":
        tokens.insert(i, tokens[i])
    elif kind == "swap_tokens":
        j = data.draw(st.integers(0, len(tokens) - 1))
        tokens[i], tokens[j] = tokens[j], tokens[i]
    else:
        tokens[i] = data.draw(st.sampled_from(
            ["0", "-1", "1e309", "{", "}", ";", ",", "x", "nan", "GiB", "over", "plan",
             "\n", "'", "\ufeff", "ﬁ", "\r", "2:4", "[0..1]", "=", "<=", "1" * 120]))
    return "".join(tokens)


@pytest.mark.slow
@fuzz(250)
@given(data=st.data())
def test_mutated_specs_never_crash_the_checker(data: st.DataObject, tmp: Path) -> None:
    text = data.draw(st.sampled_from(SOURCES))
    for _ in range(data.draw(st.integers(1, 3))):  # up to three mutations on one file
        text = mutate(text, data)
    check_never_crashes(text, tmp)


@fuzz(40)
@given(data=st.data(), fmt=st.sampled_from(["text", "sarif", "github", "junit"]))
def test_mutated_specs_render_in_every_format(data: st.DataObject, fmt: str, tmp: Path) -> None:
    text = mutate(data.draw(st.sampled_from(SOURCES)), data)
    check_never_crashes(text, tmp, fmt)


def test_infeasible_holes_are_answered_in_bounded_time(tmp: Path) -> None:
    text = (MODELS["llama"] + CLUSTERS[0] + WORKLOADS[0] + "plan p {\n  model m\n  cluster c\n"
            "  workload w\n  mesh tp=?\n  require activations >= 1 GB\n}\n")
    f = tmp / "holes.plan"
    f.write_text(text)
    # not a speed test: it used to search for 15 minutes; any answer within a minute will do
    with time_limit(60, "synthesis of an infeasible plan"):
        r = planc("check", f, *SOLVER)
    assert r.code == 1 and "E093" in r.out
