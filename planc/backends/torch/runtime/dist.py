"""Process groups: start torch.distributed, build the DeviceMesh of a RunConfig, and hand out the
process group of any tuple of mesh axes (several axes = their product, e.g. ffn over ("n", "m")).

Order of events (torchtitan style): environment -> process group -> mesh -> per-split groups,
all before any weight is read, because creating a group is collective: every rank must create
every group, in the same order.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from planc.backends.torch import memory_trace
from planc.backends.torch.launch import NO_MULTICAST_ENV
from planc.backends.torch.runtime.config import RunConfig
from planc.backends.torch.runtime.layout import Layout
from planc.layout.mesh import groups as mesh_groups

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class RankContext:
    """What every runtime function needs to know about this rank."""

    cfg: RunConfig
    layout: Layout
    mesh: DeviceMesh
    device: torch.device
    dtype: torch.dtype
    _groups: dict[frozenset[str], dist.ProcessGroup] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.layout.rank

    def group(self, axes: tuple[str, ...]) -> dist.ProcessGroup | None:
        """Process group of the ranks that differ from this one only on `axes`.

        None when those axes have size 1 (nothing to communicate). Groups for the axes in
        cfg.splits exist already; any other tuple is created here, which is collective: every
        rank must ask for it.
        """
        axes = tuple(a for a in axes if dict(self.cfg.mesh)[a] > 1)
        if not axes:
            return None
        key = frozenset(axes)
        if key not in self._groups:
            self._groups[key] = _new_axes_group(self.cfg, self.mesh, axes)
        return self._groups[key]

    def dim_group(self, dim: str) -> dist.ProcessGroup | None:
        """Group over which model dimension `dim` is split (cfg.splits[dim])."""
        return self.group(self.cfg.splits.get(dim, ()))


def _new_axes_group(cfg: RunConfig, mesh: DeviceMesh, axes: tuple[str, ...]) -> dist.ProcessGroup:
    if len(axes) == 1:
        return mesh.get_group(axes[0])
    # Every rank enumerates every group, in the same order (planc/layout/mesh.groups).
    mine, _ = dist.new_subgroups_by_enumeration([sorted(g) for g in mesh_groups(cfg.mesh, axes)])
    return mine


def init(cfg: RunConfig, device: str, timeout_s: float = 600.0) -> RankContext:
    """Start the process group (gloo on cpu, nccl on cuda) and build the mesh and its groups."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != cfg.world_size:
        raise RuntimeError(
            f"launched with {world} processes but the plan's mesh {list(cfg.mesh)} has "
            f"{cfg.world_size} ranks: run torchrun --nproc-per-node {cfg.world_size} (one node)"
        )
    exit_on_sigterm()
    timeout = timedelta(seconds=timeout_s)
    if device == "cuda":
        # NVLink multicast stays off (it can take a shared host's GPUs out of service); NCCL
        # reads this when it creates a communicator, so it must be set before the first one.
        os.environ.update(NO_MULTICAST_ENV)
        for key, value in cuda_env(cfg).items():  # before the CUDA context exists
            os.environ.setdefault(key, value)
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", timeout=timeout, device_id=dev)
    elif device == "cpu":
        dev = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return make_context(cfg, dev)


def make_context(cfg: RunConfig, dev: torch.device) -> RankContext:
    """This rank's context in the started process group (init, or a test's own world): the
    plan's mesh and every group its layers use (collective). A process group may run several
    configs one after another."""
    names = tuple(a for a, _ in cfg.mesh)
    mesh = init_device_mesh(dev.type, tuple(s for _, s in cfg.mesh), mesh_dim_names=names)
    ctx = RankContext(cfg, Layout(cfg, dist.get_rank()), mesh, dev, DTYPES[cfg.dtype])
    for dim in sorted(cfg.splits):  # sorted: every rank creates the groups in the same order
        ctx.dim_group(dim)
    for axes in combined_groups(cfg):
        ctx.group(axes)
    return ctx


def cuda_env(cfg: RunConfig) -> dict[str, str]:
    """CUDA settings a plan's program wants, read when the CUDA context is created.

    Ring attention: one hardware work queue (CUDA_DEVICE_MAX_CONNECTIONS=1, as Megatron-LM sets
    for its overlapped communication), so the next K/V block's NCCL send/receive, launched
    before the current block's attention, is dispatched first and keeps its few SMs instead of
    waiting behind the attention kernel. Measured on 4 H200s at 32k tokens: the ring kernel at
    75% of the ideal against 62% (benchmarks/results/h200x4_ring_*_run9.json). Prefill only: a
    decode's steps (flash-decoding all-gathers) were 12-14% slower with it (TPOT 1.71 / 3.23
    against 1.53 / 2.82 ms on 2 / 4 GPUs, experiment_h200x4_decode_ring_maxconn1_run10.json);
    other plans are left as they were measured."""
    sp = 1
    for axis, size in cfg.mesh:
        if axis in cfg.splits.get("seq", ()):
            sp *= size
    if cfg.attention == "ring" and sp > 1 and cfg.phase == "prefill":
        return {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    return {}


def exit_on_sigterm() -> None:
    """A rank stopped with SIGTERM (planc run's timeout, or torchrun stopping the others after
    one failed) writes where every thread was to its log, which the launcher's error shows, and
    leaves through main()'s `finally`: its process group is destroyed and a temporary
    checkpoint removed. A rank stuck inside a C++ call gets the stack but leaves only at the
    launcher's SIGKILL, a grace period later."""

    def stop(signum: int, frame: object) -> None:
        # Once: torchrun forwards the launcher's SIGTERM, and a second SystemExit raised inside
        # the `finally` would cut the clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)


def combined_groups(cfg: RunConfig) -> list[tuple[str, ...]]:
    """Groups over several split dims' axes that layers reduce over, created up front with the
    others (layers are built stage by stage, so a lazy creation could interleave differently
    on different stages): the n x m grid of a head x head_dim split (its o_proj all_reduce) and
    the experts x ffn ranks of a replicated-token MoE (its one all_reduce)."""
    s = cfg.splits
    out = []
    if "head_dim" in s:
        out.append(s.get("heads", ()) + s["head_dim"])
    if cfg.model.arch == "mixtral" and (s.get("experts") or s.get("ffn")):
        out.append(s.get("experts", ()) + s.get("ffn", ()))
    return [tuple(dict.fromkeys(axes)) for axes in out]


def barrier(ctx: RankContext) -> None:
    if ctx.device.type == "cuda":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


_BEFORE_SHUTDOWN: list[weakref.WeakMethod] = []  # type: ignore[type-arg]


def before_shutdown(release: Callable[[], None]) -> None:
    """Have shutdown() call the bound method `release` before it destroys the process group
    (last registered, first called), unless its object is gone by then: held weakly, so a
    model dropped before the end (a benchmark loading several) is freed as usual. Why: NCCL's
    communicator destroy waits forever while a CUDA graph that recorded its collectives is alive
    (pytorch/pytorch#115388: a TP 2 decode's ranks hung in destroy_process_group with their
    work done, h200x2 run 11): the static decode step registers the reset of its graphs here."""
    _BEFORE_SHUTDOWN.append(weakref.WeakMethod(release))  # type: ignore[arg-type]


def shutdown() -> None:
    """Run what before_shutdown registered, then destroy the process group. A release that
    fails (CUDA in an error state after a failed run) is reported and the rest still run: the
    process is ending either way."""
    while _BEFORE_SHUTDOWN:
        release = _BEFORE_SHUTDOWN.pop()()
        if release is None:
            continue
        try:
            release()
        except Exception as e:  # noqa: BLE001 - any failure here must not hide the run's own
            print(f"planc: releasing {release!r} before shutdown failed: {e}", file=sys.stderr)
    if dist.is_initialized():
        dist.destroy_process_group()


def run_and_leave(main: Callable[[], None]) -> NoReturn:
    """Run a generated program's main() and end the process with its exit status, as Python
    would (a SystemExit's code or message, a traceback and 1 for any other exception), but
    without the interpreter's finalization: after the process group was destroyed, a rank was
    seen aborting there under load ("terminate called without an active exception", SIGABRT,
    with its work done and its metrics written) as gloo's worker threads and the tensors they
    hold are torn down in the wrong order (pytorch/pytorch#179291 describes it)."""
    code = 0
    try:
        main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            code = 1
        else:
            code = int(e.code or 0)
    except BaseException:  # noqa: BLE001 - reported as Python would, then the status
        traceback.print_exc()
        code = 1
    try:  # a run that failed before its numbers were collected still leaves its record
        memory_trace.finish_at_exit()
    except Exception as e:  # noqa: BLE001 - the process is ending either way
        print(f"planc: writing the memory trace failed: {e}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
