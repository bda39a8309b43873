"""The README's command outputs are planc's real output: each block introduced by a
`<!-- planc ARGS -->` marker equals what `planc ARGS` prints today (run from the repository
root). `--update-goldens` rewrites the blocks; review the diff like code."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from planc.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE = re.compile(r"<!-- planc (?P<args>[^>]*?) -->\n```\n(?P<out>.*?)```", re.DOTALL)


def planc_stdout(args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(shlex.split(args))
    finally:
        os.chdir(cwd)
    assert code == 0, err.getvalue()
    return out.getvalue()


def test_the_readme_has_the_real_model_examples():
    found = [m.group("args") for m in EXAMPLE.finditer(README.read_text())]
    assert "check specs/models/llama3_70b_h100x8.plan" in found
    assert "import specs/models/llama3.1_70b_instruct" in found


@pytest.mark.parametrize("args", [m.group("args") for m in EXAMPLE.finditer(README.read_text())])
def test_a_readme_example_is_what_planc_prints(args, update_goldens):
    actual = planc_stdout(args)
    text = README.read_text()
    m = next(m for m in EXAMPLE.finditer(text) if m.group("args") == args)
    if update_goldens:
        README.write_text(text[: m.start("out")] + actual + text[m.end("out"):])
        return
    assert m.group("out") == actual, f"README.md: `planc {args}` prints another text; " \
                                     "rerun with --update-goldens and review the diff"
