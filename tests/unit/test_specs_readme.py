"""specs/README.md is generated from planc's own verdicts; it must match the specs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_specs_readme_is_up_to_date():
    p = subprocess.run([sys.executable, "scripts/specs_readme.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
