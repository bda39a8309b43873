"""run_program reports which rank failed and why, and leaves no process behind on a timeout.

The launched programs are plain scripts (no torch import), so each case costs one torchrun start.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from planc.backends.torch import launch
from planc.backends.torch.launch import LaunchError, run_program

pytestmark = pytest.mark.distributed


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its exit status is left


def test_failing_rank_is_named_with_the_tail_of_its_stderr(tmp_path: Path):
    prog = tmp_path / "fails.py"
    prog.write_text(
        textwrap.dedent("""
        import os
        if os.environ["RANK"] == "1":
            raise RuntimeError("shard 7 of layers.3.mlp.up_proj.weight is missing")
        """)
    )
    with pytest.raises(LaunchError) as err:
        run_program(prog, nproc=2, device="cpu", timeout_s=60, log_dir=tmp_path / "run")
    msg = str(err.value)
    assert "rank 1 (local rank 1) failed with exit code 1" in msg
    assert "shard 7 of layers.3.mlp.up_proj.weight is missing" in msg


def test_timeout_stops_every_rank_even_one_that_ignores_sigterm(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "GRACE_S", 2.0)
    pids = tmp_path / "pids"
    pids.mkdir()
    prog = tmp_path / "hangs.py"
    prog.write_text(
        textwrap.dedent(f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL stops this rank
        open(os.path.join({str(pids)!r}, os.environ["RANK"]), "w").write(str(os.getpid()))
        time.sleep(600)
        """)
    )
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match=r"timed out after 8 s"):
        run_program(prog, nproc=2, device="cpu", timeout_s=8, log_dir=tmp_path / "run")
    assert time.monotonic() - t0 < 60
    started = [int(p.read_text()) for p in pids.iterdir()]
    assert len(started) == 2, "both ranks should have started within the timeout"
    assert not [pid for pid in started if alive(pid)]


@pytest.mark.parametrize(("body", "code", "stderr"), [
    ("pass", 0, ""),
    ("raise SystemExit('planc: error[R004]: the output differs')", 1,
     "planc: error[R004]: the output differs"),
    ("raise SystemExit(3)", 3, ""),
    ("raise RuntimeError('boom')", 1, "RuntimeError: boom"),
])
def test_a_generated_program_leaves_with_the_status_python_would_give(body, code, stderr):
    """run_and_leave (every generated program's entry) skips the interpreter's finalization but
    keeps Python's exit status and message: a differing output still exits 1 with R004."""
    import subprocess
    import sys

    src = ("from planc.backends.torch.runtime.dist import run_and_leave\n"
           f"def main():\n    {body}\n"
           "run_and_leave(main)\n")
    p = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=120,
                       check=False)
    assert p.returncode == code, p.stderr
    assert stderr in p.stderr
