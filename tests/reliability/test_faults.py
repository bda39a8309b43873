"""Faults during `planc run` (real planc process, real torchrun, the emitted program, gloo on
CPU): a rank that raises, hangs or is SIGKILLed, a plan that needs more GPUs than are visible,
and Ctrl-C. Each ends within its timeout with planc's exit code and a message naming the rank,
no Python traceback from planc, no metrics file, and no process left behind. Faults come from
faults/sitecustomize.py, which only these tests put on PYTHONPATH (see its docstring)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.common import ROOT, TP2, alive, env_with

pytest.importorskip("torch")
pytestmark = [pytest.mark.distributed, pytest.mark.slow]

FAULTS = Path(__file__).resolve().parent / "faults"
RUN = ("run", str(TP2), "--no-reference", "--repeats", "1", "--warmup", "0")


def fault_env(tmp_path: Path, fault: str, **extra: str) -> dict[str, str]:
    return env_with(PYTHONPATH=str(FAULTS), PLANC_FAULT=fault, PLANC_FAULT_DIR=str(tmp_path),
                    OMP_NUM_THREADS="1", **extra)


def start(tmp_path: Path, fault: str, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "planc", *RUN, *args], cwd=ROOT, text=True,
                            env=fault_env(tmp_path, fault, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def rank_pids(tmp_path: Path) -> dict[int, int]:
    return {int(p.suffix[1:]): int(p.read_text()) for p in tmp_path.glob("pid.*")}


def destroyed(tmp_path: Path) -> set[int]:
    return {int(p.suffix[1:]) for p in tmp_path.glob("destroyed.*")}


def finish(p: subprocess.Popen[str], timeout: float) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"planc run did not end within {timeout} s") from None
    return p.returncode, out + err, time.monotonic() - t0


def leftovers(tmp_path: Path) -> list[int]:
    """Live processes started for this test: planc, torchrun and the ranks all inherit
    PLANC_FAULT_DIR, so any process with it in its environment outlived `planc run`."""
    mark = f"PLANC_FAULT_DIR={tmp_path}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mark in env and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def assert_no_orphans(tmp_path: Path, ranks: int = 2) -> None:
    pids = rank_pids(tmp_path)
    assert len(pids) == ranks, f"expected {ranks} ranks to have started: {pids}"
    deadline = time.monotonic() + 5  # the kernel may take a moment to reap
    while time.monotonic() < deadline and leftovers(tmp_path):
        time.sleep(0.1)
    assert not [r for r, pid in pids.items() if alive(pid)], "a rank outlived planc run"
    assert not leftovers(tmp_path), "torchrun or a rank outlived planc run"


def test_a_rank_that_raises_fails_the_run_naming_the_rank(tmp_path):
    out = tmp_path / "metrics.json"
    code, text, _ = finish(start(tmp_path, "raise:1", "--timeout", "150", "-o", str(out)), 200)
    assert code == 2, text
    assert "error[R001]" in text and "rank 1 (local rank 1) failed with exit code 1" in text
    assert "injected fault on rank 1" in text  # the tail of the rank's own stderr
    assert "planc: internal error" not in text
    assert not out.exists()
    assert 1 in destroyed(tmp_path), "the failing rank destroys its process group on the way out"
    assert_no_orphans(tmp_path)


def test_a_rank_that_hangs_times_the_collective_out_and_the_run_ends(tmp_path):
    # Rank 0 hangs after init; rank 1 waits in the next collective until the (shortened)
    # collective timeout, fails, and torchrun stops rank 0: the run's own timeout never fires.
    code, text, took = finish(start(tmp_path, "hang:0", "--timeout", "150",
                                    PLANC_FAULT_PG_TIMEOUT_S="5"), 200)
    assert code == 2, text
    assert "rank 1 (local rank 1) failed with exit code 1" in text
    assert "Timed out waiting 5000ms" in text  # gloo's collective timeout, in rank 1's stderr
    assert "timed out after 150 s" not in text and took < 120
    assert 1 in destroyed(tmp_path), "the rank whose collective timed out destroys its group"
    assert_no_orphans(tmp_path)


def test_a_run_past_its_timeout_shows_each_ranks_stack_and_cleans_up(tmp_path):
    # Both ranks hang in run(), after the temporary checkpoint is written and loaded. planc
    # run's own timeout stops them with SIGTERM: each rank dumps its stack into its log (shown
    # in the error) and leaves through main()'s finally, so its process group is destroyed and
    # the checkpoint removed.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # 35 s: the ranks reach run() in 5-15 s on two shared cores; the test waits the timeout out
    code, text, _ = finish(start(tmp_path, "hangrun:all", "--timeout", "35", TMPDIR=str(tmp)),
                           200)
    assert code == 2, text
    assert "timed out after 35 s" in text
    assert "(most recent call first)" in text and "sitecustomize.py" in text  # where it hung
    assert destroyed(tmp_path) == {0, 1}
    assert not list(tmp.glob("planc-weights-*")), "the temporary checkpoint outlived the run"
    assert_no_orphans(tmp_path)


def test_a_rank_killed_with_sigkill_is_reported_and_nothing_is_left(tmp_path):
    code, text, _ = finish(start(tmp_path, "kill:1", "--timeout", "150"), 200)
    assert code == 2, text
    assert "rank 1 (local rank 1) failed with exit code -9" in text
    assert_no_orphans(tmp_path)


def test_a_clean_run_destroys_the_process_group_on_every_rank(tmp_path):
    code, text, _ = finish(start(tmp_path, "", "--timeout", "150"), 200)
    assert code == 0, text
    assert destroyed(tmp_path) == {0, 1}
    assert_no_orphans(tmp_path)


def test_more_gpus_than_visible_is_refused_before_any_rank_starts(tmp_path):
    code, text, _ = finish(start(tmp_path, "", "--device", "cuda"), 120)
    assert code == 2, text
    assert "error[R002]" in text and "needs 2 GPUs on this node; 0 visible" in text
    assert "Traceback" not in text
    assert rank_pids(tmp_path) == {}, "no rank may start"


def test_ctrl_c_stops_every_rank_and_exits_130(tmp_path):
    out = tmp_path / "metrics.json"
    p = start(tmp_path, "hang:all", "--timeout", "300", "-o", str(out))
    deadline = time.monotonic() + 120
    while len(rank_pids(tmp_path)) < 2:  # both ranks are up (and hang in load)
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(p.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process
    code, text, _ = finish(p, 60)
    assert code == 130, text
    assert "planc: interrupted" in text and "Traceback" not in text
    assert not out.exists()
    assert_no_orphans(tmp_path)
