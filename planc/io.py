"""Atomic output: a file is either written whole or left as it was (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _mode_for(p: Path) -> int:
    """Keep an existing file's permissions; a new file gets 0666 minus the umask, as open()
    would give it (mkstemp's 0600 would make reports unreadable to others)."""
    try:
        return p.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(path: str | Path, text: str) -> None:
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    mode = _mode_for(p)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
