"""A gloo process-group harness for kernel tests: run fn(rank, world) in `world` spawned
processes on CPU, with a free port, a timeout, and the process group always destroyed."""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, port: int) -> None:
    torch.set_num_threads(1)  # 2 shared cores: do not oversubscribe
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        fn(rank, world)
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's finalization: under load, rank 0 was seen aborting there
    # ("terminate called without an active exception", SIGABRT) after its work had succeeded,
    # as gloo's worker threads and the tensors they hold are torn down in the wrong order
    # (pytorch/pytorch#179291 describes it). A failure above still raises and is reported.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn, world: int, timeout: float = 120.0) -> None:
    """Run fn(rank, world) in `world` gloo processes; a child's exception fails the test."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(
        _entry, args=(fn, world, _free_port()), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed test timed out after {timeout} s")
