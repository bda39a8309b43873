"""Fault injection for the distributed reliability tests, loaded only when a test puts this
folder on PYTHONPATH (Python imports `sitecustomize` at start-up): planc itself has no fault
hook. It reads:

  PLANC_FAULT=raise:R | hang:R | kill:R   (R a global rank, or `all`) right after the
                                          runtime's init: the process group, the mesh and its
                                          groups exist; the next collective (gathering where
                                          the checkpoint is) waits for every rank
  PLANC_FAULT=hangrun:R                   hang in program.run instead: the checkpoint is
                                          written and the shards are loaded
  PLANC_FAULT_DIR=DIR                     each rank writes DIR/pid.R at start-up and
                                          DIR/destroyed.R when it destroys its process group
  PLANC_FAULT_PG_TIMEOUT_S=S              the collective timeout (the program's is 600 s)
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

MODULE = "planc.backends.torch.runtime.dist"
FAULT = os.environ.get("PLANC_FAULT", "")
DIR = os.environ.get("PLANC_FAULT_DIR")
RANK = os.environ.get("RANK")


def _mark(name: str, text: str = "") -> None:
    if DIR and RANK is not None:
        Path(DIR, f"{name}.{RANK}").write_text(text)


def _inject() -> None:
    kind, _, where = FAULT.partition(":")
    if RANK is None or where not in (RANK, "all"):
        return
    if kind == "raise":
        raise RuntimeError(f"injected fault on rank {RANK}")
    if kind in ("hang", "hangrun"):
        while True:
            time.sleep(1)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)


def _patch(runtime_dist) -> None:  # type: ignore[no-untyped-def]
    import torch.distributed as dist

    rank_init, init = runtime_dist.init, dist.init_process_group
    destroy = dist.destroy_process_group

    def faulty_init(*args, **kwargs):  # type: ignore[no-untyped-def]
        ctx = rank_init(*args, **kwargs)
        if FAULT.startswith("hangrun:"):
            # The emitted program imported `program` before main(); it calls program.run.
            program = sys.modules["planc.backends.torch.runtime.program"]
            program.run = lambda *a, **k: _inject()
        else:
            _inject()
        return ctx

    def marked_destroy(*args, **kwargs):  # type: ignore[no-untyped-def]
        destroy(*args, **kwargs)
        _mark("destroyed")

    def short_init(*args, **kwargs):  # type: ignore[no-untyped-def]
        if os.environ.get("PLANC_FAULT_PG_TIMEOUT_S"):
            kwargs["timeout"] = timedelta(seconds=float(os.environ["PLANC_FAULT_PG_TIMEOUT_S"]))
        return init(*args, **kwargs)

    runtime_dist.init = faulty_init
    dist.destroy_process_group = marked_destroy
    dist.init_process_group = short_init


class _Finder(importlib.abc.MetaPathFinder):
    """Patches the runtime's dist module right after it is imported."""

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name != MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):  # type: ignore[no-untyped-def]
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


if RANK is not None and (FAULT or DIR):
    _mark("pid", str(os.getpid()))
    sys.meta_path.insert(0, _Finder())
