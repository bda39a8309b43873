"""Helpers for the reliability tests: run planc in-process or as a real process, bound a case's
time, and tell whether a process is still alive (through /proc: no psutil needed)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from planc.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs" / "local").glob("*.plan")) + sorted(
    (ROOT / "specs" / "seeds").glob("*.plan"))
TP2 = ROOT / "specs" / "local" / "tp2.plan"
EXIT_INTERNAL = 101


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def planc(*args: object) -> Result:
    """`planc ARGS` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def planc_process(*args: object, timeout: float = 120, env: dict[str, str] | None = None,
                  cwd: Path = ROOT) -> Result:
    """`python -m planc ARGS` as a real process (what a user or CI runs)."""
    p = subprocess.run([sys.executable, "-m", "planc", *map(str, args)], check=False,
                       capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
                       stdin=subprocess.DEVNULL)
    return Result(p.returncode, p.stdout, p.stderr)


def no_traceback(r: Result) -> None:
    assert "Traceback" not in r.text, r.text[-3000:]
    assert r.code != EXIT_INTERNAL, r.text[-3000:]


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Fail (not hang) when the block runs longer than `seconds` (main thread, Linux)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what} ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parens


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has exited


def write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_bytes(data.encode("utf-8"))  # no newline translation: bytes as given
    return path


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


