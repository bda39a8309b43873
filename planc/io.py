"""Atomic output: a file is either written whole or left as it was (temp file + rename).

A file that cannot be written (no such directory, a directory in the way, no permission) is a
user-facing `OutputError` with a diagnostic, not an internal error; it is still an OSError, so
callers that handle OSError keep working.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from planc.diagnostics import Diagnostic, PlancError, printable


class OutputError(PlancError, OSError):
    """An output file could not be written."""

    def __init__(self, path: str | Path, err: OSError):
        reason = err.strerror or str(err)
        super().__init__(Diagnostic("U003", f"cannot write {printable(str(path))}: {reason}",
                                    None, "error",
                                    "check that the directory exists and can be written"))
        self.errno, self.strerror, self.filename = err.errno, reason, str(path)


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
    try:
        mode = _mode_for(p)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise OutputError(path, e) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(path, e) from None
        raise
