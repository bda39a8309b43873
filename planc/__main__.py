"""`python -m planc` is the `planc` command."""

from __future__ import annotations

import sys

from planc.cli import main

sys.exit(main())
