"""Same input, same bytes: `planc check --format json`, `planc compile` and `planc emit` print
byte-identical output (and exit codes and messages) for every spec in specs/local and
specs/seeds whatever Python's hash seed, so set or dict ordering never leaks into a report, a
placement graph or a generated program. One process per seed runs every command
(determinism_driver.py); a real `python -m planc check` per seed checks one spec the same way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.reliability.common import ROOT, SPECS, env_with, planc_process

SEEDS = ("0", "1", "123")


def run_driver(seed: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.determinism_driver"],
                            cwd=ROOT, env=env_with(PYTHONHASHSEED=seed), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_every_spec_gives_the_same_bytes_under_every_hash_seed():
    procs = {seed: run_driver(seed) for seed in SEEDS}
    got = {}
    for seed, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        got[seed] = json.loads(out)
    first = got[SEEDS[0]]
    checked = {k.split()[1] for k in first if k.startswith("check ")}
    assert len(checked) == len(SPECS) >= 12
    assert sum(1 for k, v in first.items() if k.startswith("emit ") and v[0] == 0) >= 10
    for seed in SEEDS[1:]:
        differ = sorted(k for k in first if got[seed].get(k) != first[k])
        assert not differ, f"PYTHONHASHSEED={seed} changes the output of: {differ}"


@pytest.mark.slow
def test_a_real_planc_process_per_seed_prints_the_same_report():
    spec = "specs/local/tp2_pp2.plan"
    runs = [planc_process("check", "--format", "json", spec, env=env_with(PYTHONHASHSEED=s))
            for s in SEEDS]
    assert runs[0].code == 0 and runs[0].out, runs[0].err
    assert all((r.code, r.out, r.err) == (runs[0].code, runs[0].out, runs[0].err) for r in runs)
