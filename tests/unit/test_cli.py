"""The command line: exit codes, the JSON contract, atomic outputs, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from planc.cli import main
from tests.helpers import plan_text

ROOT = Path(__file__).resolve().parents[2]
GOOD = plan_text("  mesh pp=2, tp=8\n  shard layers over pp microbatches 8\n"
                 "  shard heads, kv_heads, ffn over tp\n")


def run(args, capsys):  # type: ignore[no-untyped-def]
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def good(tmp_path: Path) -> Path:
    f = tmp_path / "good.plan"
    f.write_text(GOOD)
    return f


def test_check_exit_codes(tmp_path, good, capsys):
    assert run(["check", good], capsys)[0] == 0
    bad = tmp_path / "bad.plan"
    bad.write_text(GOOD.replace("tp=8", "tp=3"))
    assert run(["check", bad], capsys)[0] == 1
    syntax = tmp_path / "syntax.plan"
    syntax.write_text("model m {\n  layers\n}\n")
    code, out, _ = run(["check", syntax], capsys)
    assert code == 1 and "P111" in out and "syntax.plan:2:9" in out
    assert run(["check", good, "--no-such-flag"], capsys)[0] == 2
    assert run(["check", good, "--rlimit", "1"], capsys)[0] == 3


def test_check_json_follows_the_contract(good, capsys):
    code, out, _ = run(["check", good, "--format", "json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["format_version"] == "1" and doc["diagnostics"] == []
    [p] = doc["plans"]
    assert {"file", "name", "status", "devices", "device_classes", "obligations"} <= set(p)
    assert p["status"] == "proved" and p["devices"] == 16
    for cls in p["device_classes"]:
        assert set(cls["memory"]) >= {"weights", "activations", "kv_cache", "buffers", "reserve",
                                      "peak", "capacity"}
        assert all(isinstance(v, int) for v in cls["memory"].values())
        assert cls["ranks"] and all(isinstance(r, int) for r in cls["ranks"])
    kinds = {o["kind"] for o in p["obligations"]}
    assert {"device_count", "divisibility", "coverage", "hbm_capacity"} <= kinds
    for o in p["obligations"]:
        assert {"kind", "code", "status", "message", "line"} <= set(o)


def test_json_stays_valid_for_usage_errors_and_missing_files(tmp_path, capsys):
    code, out, _ = run(["check", tmp_path / "missing.plan", "--format", "json"], capsys)
    doc = json.loads(out)
    assert code == 1 and doc["diagnostics"][0]["code"] == "P001"
    code, out, _ = run(["check", "--format", "json", "--bogus"], capsys)
    assert code == 2 and json.loads(out)["diagnostics"][0]["code"] == "U001"


def test_outputs_are_written_whole_or_not_at_all(tmp_path, good, capsys):
    out = tmp_path / "graph.json"
    assert run(["compile", good, "-o", out], capsys)[0] == 0
    graph = json.loads(out.read_text())
    assert graph["plan"] == "p" and len(graph["classes"]) == 2
    before = out.read_text()
    bad = tmp_path / "bad.plan"
    bad.write_text("model m {\n")
    assert run(["compile", bad, "-o", out], capsys)[0] == 1
    assert out.read_text() == before  # the failed run left the old file untouched
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_compile_is_deterministic_and_schema_validates_it(good, capsys):
    a = run(["compile", good], capsys)[1]
    b = run(["compile", good], capsys)[1]
    assert a == b
    schema = json.loads(run(["schema"], capsys)[1])
    assert schema["title"] == "PlacementGraph" and "classes" in schema["properties"]


def test_emit_refuses_a_violated_plan(tmp_path, capsys):
    bad = tmp_path / "bad.plan"
    bad.write_text(GOOD.replace("tp=8", "tp=3"))
    code, _, err = run(["emit", bad], capsys)
    assert code == 1 and "V201" in err and "not proved" in err


def test_no_traceback_for_bad_input_in_a_real_process(tmp_path):
    cases = ["", "model m {", "\x00", "plan p {\n  mesh tp=0\n}\n", "model m { layers 1e999 }"]
    for i, text in enumerate(cases):
        f = tmp_path / f"c{i}.plan"
        f.write_text(text)
        for cmd in (["check", str(f)], ["compile", str(f)], ["emit", str(f)]):
            p = subprocess.run([sys.executable, "-m", "planc", *cmd], capture_output=True,
                               text=True, cwd=ROOT, timeout=60, check=False)
            assert "Traceback" not in p.stderr + p.stdout, (text, cmd, p.stderr)
            assert p.returncode in (0, 1, 2), (text, cmd, p.returncode, p.stderr)


def test_a_directory_is_searched_for_plans(tmp_path, good, capsys):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.plan").write_text(GOOD)
    code, out, _ = run(["check", tmp_path, "--format", "json"], capsys)
    assert code == 0 and len(json.loads(out)["plans"]) == 2


def test_reports_keep_normal_permissions(tmp_path, good, capsys):
    import os
    import stat

    out = tmp_path / "r.json"
    assert run(["check", good, "--format", "json", "-o", out], capsys)[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    out.chmod(0o640)
    run(["check", good, "--format", "json", "-o", out], capsys)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_syntax_errors_in_check_show_the_source_line(tmp_path, capsys):
    f = tmp_path / "s.plan"
    f.write_text("model m {\n  layers\n}\n")
    code, out, _ = run(["check", f], capsys)
    assert code == 1 and "2 |   layers" in out and "^" in out


def test_run_text_reports_decode_metrics():
    from planc.cli import _run_text

    text = _run_text({"plan": "p", "world_size": 2, "device": "cpu", "ttft_ms": 12.5,
                      "tpot_ms": 3.25, "output_tokens_per_s": 100.0, "matches_reference": False,
                      "ranks": []})
    assert "TTFT 12.50 ms" in text and "TPOT 3.250 ms" in text and "DIFFER" in text
    prefill = _run_text({"plan": "p", "world_size": 2, "device": "cpu", "tokens_per_s": 10.0,
                         "time_s": 0.5, "ranks": []})
    assert "10 tokens/s (forward 500.00 ms)" in prefill


def test_run_refuses_negative_warmup_and_zero_repeats_before_starting(good, capsys):
    code, _, err = run(["run", good, "--repeats", "0"], capsys)
    assert code == 2 and "repeats >= 1" in err
    code, _, err = run(["run", good, "--warmup", "-1"], capsys)
    assert code == 2 and "warmup >= 0" in err
