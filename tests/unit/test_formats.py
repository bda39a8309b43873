"""`planc check --format text|json|sarif|github|junit`: every format of `planc check specs/`
parsed back and cross-checked against the JSON contract; escaping that user text cannot break;
valid documents for usage errors; colour only on terminals."""

from __future__ import annotations

import io
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from planc.cli import main
from planc.diagnostics import Diagnostic, Related, Span
from planc.output import FORMATS, render, usage_error
from planc.output.console import progress, write_text
from planc.pipeline import check_paths
from planc.verifier.report import CheckResult
from tests.helpers import plan_text

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).parent / "data" / "sarif-2.1.0-rtm.5.schema.json"
GOOD = plan_text("  mesh pp=2, tp=8\n  shard layers over pp microbatches 8\n"
                 "  shard heads, kv_heads, ffn over tp\n")


@pytest.fixture(scope="module")
def specs() -> CheckResult:
    """`planc check specs/` once for the whole module (it takes seconds)."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return check_paths(["specs"])
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def outputs(specs: CheckResult) -> dict[str, str]:
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return {f: render(specs, f) for f in FORMATS}
    finally:
        os.chdir(cwd)


def failing_in_json(doc: dict) -> tuple[int, int, int]:
    """(violated, unknown, error+warning diagnostics) counted from the JSON contract."""
    obs = [o for p in doc["plans"] for o in p["obligations"]]
    return (sum(o["status"] == "violated" for o in obs), sum(o["status"] == "unknown" for o in obs),
            len(doc["diagnostics"]))


# ---------------------------------------------------------------------------------------------
# SARIF


def check_sarif_structure(doc: dict) -> None:
    """The parts of SARIF 2.1.0 code-scanning tools rely on, checked by hand (no schema)."""
    assert doc["version"] == "2.1.0" and doc["$schema"].endswith("sarif-2.1.0.json")
    [run] = doc["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "planc" and isinstance(driver["rules"], list)
    ids = [r["id"] for r in driver["rules"]]
    assert len(ids) == len(set(ids)), "rule ids are unique"
    bases = run.get("originalUriBaseIds", {})
    for base in bases.values():
        assert base["uri"].startswith("file:///") and base["uri"].endswith("/")
    for res in run["results"]:
        assert isinstance(res["message"]["text"], str) and res["message"]["text"]
        assert res["level"] in ("none", "note", "warning", "error")
        assert driver["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["partialFingerprints"] and all(
            isinstance(v, str) for v in res["partialFingerprints"].values())
        for loc in res.get("locations", []) + res.get("relatedLocations", []):
            art = loc["physicalLocation"]["artifactLocation"]
            if "uriBaseId" in art:
                assert art["uriBaseId"] in bases
                assert not art["uri"].startswith(("/", "file:")) and ".." not in art["uri"]
            region = loc["physicalLocation"].get("region")
            if region:
                assert region["startLine"] >= 1 and region["startColumn"] >= 1
                if "endLine" in region:
                    assert (region["endLine"], region["endColumn"]) >= (
                        region["startLine"], region["startColumn"])
    inv = run["invocations"][0]
    assert isinstance(inv["executionSuccessful"], bool)


def validate_sarif(doc: dict) -> None:
    check_sarif_structure(doc)
    try:
        import jsonschema
    except ImportError:  # the hand check above still ran
        return
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft4Validator(schema).validate(doc)


def test_sarif_of_specs_is_valid_and_has_one_result_per_failure(outputs):
    doc = json.loads(outputs["sarif"])
    validate_sarif(doc)
    violated, unknown, diags = failing_in_json(json.loads(outputs["json"]))
    results = doc["runs"][0]["results"]
    assert violated > 0 and len(results) == violated + unknown + diags
    codes = {r["ruleId"] for r in results}
    assert {"V400", "V500", "V600", "V700"} <= codes
    assert {r["id"] for r in doc["runs"][0]["tool"]["driver"]["rules"]} == codes
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results}
    assert uris <= {p.relative_to(ROOT).as_posix() for p in (ROOT / "specs").rglob("*.plan")}
    fps = [r["partialFingerprints"]["plancFingerprint/v1"] for r in results]
    assert len(fps) == len(set(fps)), "every alert has its own fingerprint"


def test_sarif_schema_rejects_a_broken_log(outputs):
    doc = json.loads(outputs["sarif"])
    doc["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(AssertionError):
        validate_sarif(doc)
    doc = json.loads(outputs["sarif"])
    del doc["runs"][0]["tool"]["driver"]["name"]
    with pytest.raises(KeyError):
        check_sarif_structure(doc)


def _sarif_of(path: Path, capsys) -> dict:  # type: ignore[no-untyped-def]
    assert main(["check", str(path), "--format", "sarif"]) in (0, 1)
    return json.loads(capsys.readouterr().out)


def test_sarif_fingerprints_survive_moved_lines_and_paths_are_relative(tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "p.plan"
    f.write_text(GOOD.replace("tp=8", "tp=3"))
    before = _sarif_of(f, capsys)
    f.write_text("# a comment\n\n" + GOOD.replace("tp=8", "tp=3"))
    after = _sarif_of(f, capsys)
    validate_sarif(before)
    rb, ra = before["runs"][0]["results"], after["runs"][0]["results"]
    assert rb and len(rb) == len(ra)
    for b, a in zip(rb, ra):
        assert b["partialFingerprints"] == a["partialFingerprints"]
        lb = b["locations"][0]["physicalLocation"]
        la = a["locations"][0]["physicalLocation"]
        assert la["region"]["startLine"] == lb["region"]["startLine"] + 2
        assert lb["artifactLocation"] == {"uri": "sub/p.plan", "uriBaseId": "%SRCROOT%"}
    root = before["runs"][0]["originalUriBaseIds"]["%SRCROOT%"]["uri"]
    assert root == tmp_path.resolve().as_uri() + "/" or root == tmp_path.as_uri() + "/"


def test_sarif_escapes_paths_into_uris(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "odd name#1.plan"
    f.write_text(GOOD.replace("tp=8", "tp=3"))
    doc = _sarif_of(f, capsys)
    validate_sarif(doc)
    uri = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"][
        "artifactLocation"]["uri"]
    assert uri == "odd%20name%231.plan"


# ---------------------------------------------------------------------------------------------
# GitHub annotations: parsed back the way the Actions runner reads them


def _unescape_data(s: str) -> str:
    return s.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def _unescape_property(s: str) -> str:
    return (s.replace("%0D", "\r").replace("%0A", "\n").replace("%3A", ":").replace("%2C", ",")
            .replace("%25", "%"))


def parse_command(line: str) -> tuple[str, dict[str, str], str] | None:
    """The runner's parser (ActionCommand.TryParseV2): `::name k=v,k=v::data`."""
    if not line.startswith("::"):
        return None
    end = line.find("::", 2)
    if end < 0:
        return None
    info = line[2:end]
    name, _, props_text = info.partition(" ")
    props = {}
    for part in filter(None, props_text.strip().split(",")):
        k, sep, v = part.partition("=")
        if sep:
            props[k] = _unescape_property(v)
    return name, props, _unescape_data(line[end + 2:])


def test_github_annotations_of_specs_parse_back_one_per_failure(outputs):
    lines = outputs["github"].split("\n")
    assert lines[-1] == "" and lines[-2].startswith("planc check: ")
    parsed = [parse_command(x) for x in lines[:-2]]
    assert all(p is not None for p in parsed)
    violated, unknown, diags = failing_in_json(json.loads(outputs["json"]))
    assert len(parsed) == violated + unknown + diags
    sarif = json.loads(outputs["sarif"])["runs"][0]["results"]
    for (name, props, message), res in zip(parsed, sarif):  # type: ignore[misc]
        # specs/ holds plans that verify with a W102 warning (a group across nodes)
        assert name == ("warning" if res["ruleId"].startswith("W") else "error")
        loc = res["locations"][0]["physicalLocation"]
        assert props["file"] == loc["artifactLocation"]["uri"]
        assert int(props["line"]) == loc["region"]["startLine"]
        assert int(props["col"]) == loc["region"]["startColumn"]
        title = props["title"]  # "planc CODE", then the obligation kind / plan when there is one
        assert title == f"planc {res['ruleId']}" or title.startswith(f"planc {res['ruleId']} ")
        assert message.split("\n")[0] in res["message"]["text"]


EVIL = "50%\r\n::error file=forged.plan,line=1::forged, %0A too :: done"


def _evil_result(tmp_path: Path) -> CheckResult:
    """A checked plan whose plan name, messages and path carry everything GitHub escapes."""
    path = tmp_path / "a,b:c%d.plan"
    path.write_text(GOOD.replace("tp=8", "tp=3"))
    result = check_paths([str(path)])
    [p] = result.plans
    evil_verdicts = []
    for v in p.verdicts:
        ob = replace(v.obligation, bad=EVIL + " " + v.obligation.bad, hint=EVIL)
        evil_verdicts.append(replace(v, obligation=ob))
    p.name = "plan" + EVIL
    p.verdicts = evil_verdicts
    span = Span(str(path), 2, 3, 2, 9)
    result.diagnostics = [replace(d, message=EVIL + d.message) for d in result.diagnostics]
    result.diagnostics.append(Diagnostic("W051", EVIL, span, "warning", EVIL,
                                         (Related(span, EVIL),)))
    return result


def test_github_escaping_keeps_forged_commands_inside_their_annotation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _evil_result(tmp_path)
    out = render(result, "github")
    lines = out.split("\n")[:-1]
    commands = [parse_command(x) for x in lines if x.startswith("::")]
    failing = [v for p in result.plans for v in p.verdicts if v.status == "violated"]
    assert len(commands) == len(failing) + len(result.diagnostics), "one per finding, no forgery"
    assert len(lines) == len(commands) + 1  # and the summary line
    for name, props, message in commands:  # type: ignore[misc]
        assert name in ("error", "warning")
        assert props["file"] == "a,b:c%d.plan"
        assert set(props) <= {"file", "line", "col", "endLine", "endColumn", "title"}
        assert EVIL in message
    titles = {props["title"] for _, props, _ in commands}  # type: ignore[misc]
    assert "planc V201 divisibility (plan plan" + EVIL + ")" in titles


def test_github_properties_escape_colon_and_comma():
    from planc.output.github import command

    line = command("error", {"file": "x,y:z%.plan", "title": "a\nb"}, "m%\n::x")
    assert line == "::error file=x%2Cy%3Az%25.plan,title=a%0Ab::m%25%0A::x"
    assert parse_command(line) == ("error", {"file": "x,y:z%.plan", "title": "a\nb"}, "m%\n::x")


# ---------------------------------------------------------------------------------------------
# JUnit


def test_junit_of_specs_has_a_case_per_obligation_and_failures_for_violations(outputs):
    root = ET.fromstring(outputs["junit"])
    doc = json.loads(outputs["json"])
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    plans = {(p["file"], p["name"]): p for p in doc["plans"]}
    plan_suites = [s for s in suites if not s.get("name", "").endswith("(input)")]
    assert len(plan_suites) == len(plans)
    for s in plan_suites:
        file, name = s.get("name", "").rsplit("::", 1)
        p = plans[(file, name)]
        cases = s.findall("testcase")
        assert len(cases) == len(p["obligations"]) == int(s.get("tests", "-1"))
        failures = [c for c in cases if c.find("failure") is not None]
        assert len(failures) == sum(o["status"] == "violated" for o in p["obligations"])
        assert int(s.get("failures", "-1")) == len(failures)
        assert {c.find("failure").get("type") for c in failures} == {  # type: ignore[union-attr]
            o["code"] for o in p["obligations"] if o["status"] == "violated"}
        props = {e.get("name"): e.get("value") for e in s.iter("property")}
        assert props["status"] == p["status"]
    violated, unknown, _ = failing_in_json(doc)
    assert int(root.get("failures", "-1")) == violated
    assert int(root.get("errors", "-1")) == unknown + sum(
        d["severity"] == "error" for d in doc["diagnostics"])


def test_junit_reports_unknown_as_errors_and_input_problems_as_error_cases(tmp_path, capsys):
    good = tmp_path / "good.plan"
    good.write_text(GOOD)
    assert main(["check", str(good), "--format", "junit", "--rlimit", "1"]) == 3
    root = ET.fromstring(capsys.readouterr().out)
    errors = root.findall(".//testcase/error")
    assert errors and int(root.get("errors", "0")) == len(errors)
    assert root.findall(".//failure") == []
    bad = tmp_path / "bad.plan"
    bad.write_text("model m {\n  layers\n}\n")
    assert main(["check", str(bad), "--format", "junit"]) == 1
    root = ET.fromstring(capsys.readouterr().out)
    [case] = root.findall(".//testcase")
    assert case.get("line") == "2" and case.find("error").get("type") == "P111"  # type: ignore[union-attr]


def test_junit_survives_control_characters_and_markup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _evil_result(tmp_path)
    result.plans[0].name = "<plan & \x07 ]]>"
    root = ET.fromstring(render(result, "junit"))
    names = [s.get("name") for s in root.findall("testsuite")]
    assert any(n and n.endswith("::<plan & \ufffd ]]>") for n in names)


# ---------------------------------------------------------------------------------------------
# Usage errors, -o, text


@pytest.mark.parametrize("fmt", ["json", "sarif", "junit", "github"])
def test_machine_formats_stay_valid_for_bad_flags(fmt, capsys):
    assert main(["check", "specs", "--format", fmt, "--bogus"]) == 2
    out = capsys.readouterr()
    assert "--bogus" in out.err
    if fmt == "json":
        assert json.loads(out.out)["diagnostics"][0]["code"] == "U001"
    elif fmt == "sarif":
        doc = json.loads(out.out)
        validate_sarif(doc)
        inv = doc["runs"][0]["invocations"][0]
        assert inv["executionSuccessful"] is False and inv["exitCode"] == 2
        assert "--bogus" in inv["toolExecutionNotifications"][0]["message"]["text"]
    elif fmt == "junit":
        root = ET.fromstring(out.out)
        assert root.get("errors") == "1" and root.find(".//error").get("type") == "U001"  # type: ignore[union-attr]
    else:
        [line] = out.out.splitlines()
        name, _, message = parse_command(line)  # type: ignore[misc]
        assert name == "error" and "--bogus" in message


def test_sarif_for_a_missing_file_reports_it(tmp_path, capsys):
    code = main(["check", str(tmp_path / "missing.plan"), "--format", "sarif"])
    doc = json.loads(capsys.readouterr().out)
    validate_sarif(doc)
    assert code == 1 and doc["runs"][0]["results"][0]["ruleId"] == "P001"


def test_usage_error_document_goes_to_the_output_file(tmp_path, capsys):
    out = tmp_path / "report.sarif"
    assert main(["check", "--format=sarif", "-o", str(out), "--bogus"]) == 2
    assert capsys.readouterr().out == ""
    validate_sarif(json.loads(out.read_text()))
    assert usage_error("text", "x") is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_file_holds_what_stdout_would(fmt, tmp_path, capsys):
    good = tmp_path / "good.plan"
    good.write_text(GOOD)
    assert main(["check", str(good), "--format", fmt]) == 0
    shown = capsys.readouterr().out
    out = tmp_path / f"report.{fmt}"
    assert main(["check", str(good), "--format", fmt, "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert out.read_text() == shown
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_is_coloured_only_on_a_terminal_without_no_color(monkeypatch):
    text = "x.plan: plan p: VIOLATED (2 devices)\nerror[V400]: too big\n  = hint: fewer\n"
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    plain = io.StringIO()
    write_text(text, plain)
    assert plain.getvalue() == text
    tty = _Tty()
    write_text(text, tty)
    assert "\x1b[" in tty.getvalue()
    stripped = re.sub(r"\x1b\[[0-9;]*m", "", tty.getvalue())
    assert stripped == text
    monkeypatch.setenv("NO_COLOR", "1")
    tty = _Tty()
    write_text(text, tty)
    assert tty.getvalue() == text


def test_progress_is_silent_off_a_terminal_and_shows_elapsed_time_on_one():
    quiet = io.StringIO()
    with progress("running plan p", quiet):
        pass
    assert quiet.getvalue() == ""
    tty = _Tty()
    with progress("running plan p", tty):
        pass
    assert "running plan p done in" in tty.getvalue()
    tty = _Tty()
    with pytest.raises(RuntimeError), progress("running plan p", tty):
        raise RuntimeError("boom")
    assert "running plan p failed after" in tty.getvalue()


def test_run_shows_progress_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    """`planc run` with a stand-in backend (no torch): the spinner line appears on a TTY."""
    import time
    from types import SimpleNamespace

    from planc import cli

    class LaunchError(Exception):
        pass

    def run_program(prog, **kw):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return {"world_size": 16, "device": "cpu", "tokens_per_s": 1.0, "time_s": 1.0,
                "ranks": []}

    fake = (SimpleNamespace(emit_program=lambda cfg, **kw: "print('hi')\n"),
            SimpleNamespace(run_program=run_program, LaunchError=LaunchError))
    monkeypatch.setattr(cli, "_torch_backend", lambda: fake)
    good = tmp_path / "good.plan"
    # GOOD's 16 ranks need 119 GB at float32 on the CPU, which pre-flight refuses before
    # launch; a narrower model keeps the 16-rank mesh within any test machine's memory.
    good.write_text(GOOD.replace("hidden   4096", "hidden   512").replace("ffn      16384",
                                                                          "ffn      1024"))
    assert main(["run", str(good), "--no-reference"]) == 0
    err = capsys.readouterr().err
    assert err == "running plan 'p' on 16 cpu ranks ...\n"  # nothing extra off a terminal
    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    assert main(["run", str(good), "--no-reference"]) == 0
    assert "running plan 'p' on 16 cpu ranks done in" in tty.getvalue()
