"""Wrong values in well-formed files: duplicates, unknown or misplaced keys, and numbers that
cannot be real (zero, negative, nan, inf, 1e309, 2**70 bytes, missing, mixed or bit units,
fractional bytes) each get a diagnostic with its code at the line and column of the mistake,
related locations where two places are involved, and exit 1: never a traceback or a proof."""

from __future__ import annotations

import json

import pytest

from planc.compiler.resolve import resolve
from planc.diagnostics import Diagnostics
from planc.grammar.parse import parse_text
from tests.reliability.common import TP2, no_traceback, planc, write

GOOD = TP2.read_text()  # cluster at line 5, model at 9, workload at 20, plan at 25
DEVICE = "device d {\n  memory MEM\n  cache 50 MB\n  compute 1 TFLOPS\n  bandwidth 1 TB/s\n}\n"


def edit(old: str, new: str, text: str = GOOD) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def with_device(memory: str) -> str:
    return DEVICE.replace("MEM", memory) + edit("device CPU x 2", "device d x 2")


def with_require(line: str) -> str:
    return edit("  shard    heads, kv_heads, ffn over tp", f"  shard    heads, kv_heads, ffn over "
                f"tp\n  require  {line}")


# name -> (text, code, line, column, words in message or hint, related line or None)
CASES = {
    # 4. duplicates: the error at the second, the related location at the first
    "duplicate_block": (GOOD + "\nmodel tiny {\n  layers 2\n}\n", "E001", 33, 7, "defined twice", 9),
    "duplicate_plan": (GOOD + "\nplan tp2 {\n}\n", "E001", 33, 6, "defined twice", 25),
    "duplicate_key": (edit("  layers   4\n", "  layers   4\n  layers   8\n"), "E011", 12, 3,
                      "set twice", 11),
    "duplicate_axis": (edit("tp=2", "tp=2, tp=1"), "E030", 29, 18, "appears twice", 29),
    "duplicate_mesh": (edit("  mesh     tp=2\n", "  mesh     tp=2\n  mesh tp=2\n"), "E011", 30, 3,
                       "mesh is set twice", 29),
    "sharded_twice": (edit("over tp", "over tp\n  shard ffn over tp"), "E035", 31, 9,
                      "sharded twice", 30),
    "duplicate_link": (edit("  device CPU x 2\n", "  device CPU x 2\n  link intra 1 GB/s\n"
                            "  link intra 2 GB/s\n"), "E011", 8, 8, "set twice", 7),
    # 4. unknown, misspelt and misplaced keys
    "misspelt_key": (edit("  layers   4", "  layres   4"), "E012", 11, 3, "did you mean 'layers'",
                     None),
    "misspelt_kind": (edit("model tiny {", "modle tiny {"), "P103", 9, 1, "did you mean 'model'",
                      None),
    "misspelt_reference": (edit("  model    tiny", "  model    tiyn"), "E003", 26, 12,
                           "did you mean 'tiny'", None),
    "key_of_another_block": (edit("  layers   4\n", "  layers   4\n  batch 4\n"), "E012", 12, 3,
                             "'batch' belongs in a workload block", None),
    "plan_statement_in_model": (edit("  layers   4\n", "  layers   4\n  mesh tp=2\n"), "E010", 12,
                                3, "belongs in a plan block", None),
    "unknown_metric": (with_require("memroy <= 90%"), "E040", 31, 12, "did you mean 'memory'",
                       None),
    # 5. numbers
    "zero_layers": (edit("layers   4", "layers   0"), "E023", 11, 12, "at least 1", None),
    "negative_layers": (edit("layers   4", "layers   -4"), "P100", 11, 12, "no negative numbers",
                        None),
    "zero_devices": (edit("CPU x 2", "CPU x 0"), "E023", 6, 16, "at least 1", None),
    "fractional_devices": (edit("CPU x 2", "CPU x 2.5"), "E022", 6, 16, "whole number", None),
    "zero_axis": (edit("tp=2", "tp=0"), "E023", 29, 15, "at least 1", None),
    "nan_count": (edit("layers   4", "layers   nan"), "E021", 11, 12, "finite number, not nan",
                  None),
    "inf_count": (edit("layers   4", "layers   inf"), "E021", 11, 12, "finite number, not inf",
                  None),
    "nan_bytes": (with_device("nan GB"), "P106", 2, 14, "no nan or inf", None),
    "inf_bytes": (with_device("inf GiB"), "P106", 2, 14, "no nan or inf", None),
    "e309_count": (edit("layers   4", "layers   1e309"), "E024", 11, 12, "larger than any real",
                   None),
    "e309_axis": (edit("tp=2", "tp=1e309"), "E024", 29, 15, "larger than any real", None),
    "two_to_the_70_bytes": (with_device(f"{2**70} B"), "E024", 2, 10, "the limit is 1 PiB", None),
    "power_syntax": (with_device("2^70 B"), "P100", 2, 11, "'^'", None),
    "huge_mesh": (edit("tp=2", "tp=2, " + ", ".join(f"x{i}=2" for i in range(70))), "E024", 29,
                  3, "planc plans at most 1,048,576", None),
    "missing_unit": (with_device("80"), "E026", 2, 10, "e.g. `memory 80 GB`", None),
    "two_units": (with_device("80 GB GiB"), "P112", 2, 16, "one value per line", None),
    "bits_unit": (with_device("80 Gb"), "E027", 2, 13, "reads as bits", None),
    "lowercase_unit": (with_device("80 gb"), "E027", 2, 13, "did you mean 'GB'", None),
    "unit_of_another_kind": (with_device("80 GB/s"), "E027", 2, 13, "wrong kind of unit", None),
    "fractional_bytes": (with_device("1048576.5 B"), "E022", 2, 10, "whole number of bytes",
                         None),
    "tiny_memory": (with_device("1 B"), "E023", 2, 3, "at least 1 MiB", None),
    "zero_memory": (with_device("0 GB"), "E023", 2, 10, "must be positive", None),
    "require_zero_percent": (with_require("memory <= 0%"), "E023", 31, 22, "positive value",
                             None),
    "require_half_byte": (with_require("weights <= 0.5 B"), "E023", 31, 23, "at least 1", None),
    "require_1e400": (with_require("memory <= 1e400 B"), "E024", 31, 22, "larger than any real",
                      None),
    "require_1e-400": (with_require("latency <= 1e-400 s"), "E023", 31, 23, "positive value",
                       None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_wrong_value_gets_its_code_at_its_position(name, tmp_path):
    text, code, line, col, words, related = CASES[name]
    r = planc("check", write(tmp_path / f"{name}.plan", text), "--format", "json")
    no_traceback(r)
    assert r.code == 1, r.text[-2000:]
    doc = json.loads(r.out)
    if not name.startswith("duplicate_"):  # a duplicate is skipped: the first one still counts
        assert doc["plans"] == [], "a plan with a wrong value is never verified"
    errors = [d for d in doc["diagnostics"] if d["severity"] == "error"]
    if name == "misspelt_key":  # the block also lacks `layers`: said at the block's name
        assert [(d["code"], d["line"]) for d in errors[:1]] == [("E013", 9)]
        errors = errors[1:]
    assert len(errors) == 1, errors  # one mistake, one error: no cascade
    d = errors[0]
    assert (d["code"], d["line"], d["column"]) == (code, line, col), d
    assert words in d["message"] + " " + (d["hint"] or ""), d
    if related is not None:
        assert [x["line"] for x in d["related"]] == [related], d


def test_decimal_and_binary_units_are_exact_and_different():
    spec = resolve(parse_text(DEVICE.replace("MEM", "80 GB") + DEVICE.replace("device d", "device "
                   "e").replace("MEM", "80 GiB") + "device f from H100 {\n  cache 1.5 KiB\n}\n"),
                   Diagnostics())
    assert spec.devices["d"].memory == 80 * 10**9
    assert spec.devices["e"].memory == 80 * 2**30
    assert spec.devices["f"].cache == 1536  # a fraction of a KiB that is whole in bytes


def test_a_plan_that_fits_in_gib_but_not_in_gb_is_told_apart(tmp_path):
    # Weights of the tiny model in fp32 need ~0.6 MB per rank: 1 MiB fits with 1.04 MB of room,
    # 0.001 GiB (1,073,741.824 B) is not whole bytes, 1 MB (1,000,000 B) is smaller than 1 MiB.
    fits = planc("check", write(tmp_path / "mib.plan", with_device("1 MiB")), "--format", "json")
    mb = planc("check", write(tmp_path / "mb.plan", with_device("1 MB")), "--format", "json")
    no_traceback(fits)
    no_traceback(mb)
    assert json.loads(fits.out)["diagnostics"] == []
    assert [d["code"] for d in json.loads(mb.out)["diagnostics"]] == ["E023"]  # < 1 MiB


def test_require_on_devices_is_checked_not_an_internal_error(tmp_path):
    # `require devices <= N` crashed on Python 3.11 (a Fraction formatted with "g").
    r = planc("check", write(tmp_path / "d.plan", with_require("devices <= 4")), "--verbose")
    no_traceback(r)
    assert r.code == 0 and "devices is 2, so `devices <= 4` holds" in r.out
    r = planc("check", write(tmp_path / "d1.plan", with_require("devices <= 1")))
    assert r.code == 1 and "V600" in r.out


def test_errors_in_a_device_do_not_cascade_into_the_cluster(tmp_path):
    r = planc("check", write(tmp_path / "d.plan", with_device("0 GB")), "--format", "json")
    codes = [d["code"] for d in json.loads(r.out)["diagnostics"]]
    assert codes == ["E023"], "the cluster naming the broken device adds no 'unknown device'"


def test_definitions_without_a_plan_warn_and_verify_nothing(tmp_path):
    r = planc("check", write(tmp_path / "defs.plan", GOOD.split("plan tp2")[0]), "--format",
              "json")
    doc = json.loads(r.out)
    assert r.code == 0 and doc["plans"] == []
    [d] = doc["diagnostics"]
    assert (d["code"], d["severity"], d["line"], d["column"]) == ("W005", "warning", 5, 9)
