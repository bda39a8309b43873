"""planc calibrate: measure the machine planc runs on and write it as a `device` block.

Presets are datasheet figures: upper bounds, right for refuting claims, wrong for "does it fit"
and "how fast". This measures, on the device itself:
- memory: cudaMemGetInfo's total (what torch sees, not nvidia-smi's figure), and reserve: what
  torch's caching allocator cannot get of it once the CUDA context, cuBLAS / cuDNN handles and,
  with several GPUs, NCCL communicators at the given group sizes exist. It is found by
  allocating until the allocator fails (so fragmentation at the allocator's block sizes counts),
  plus a margin for kernels that CUDA loads lazily on their first use in a real run;
- gemm, attention, hbm: a large bf16 GEMM, causal SDPA (causal FLOPs counted as half), a device
  copy (bytes read + written);
- with several GPUs: all-reduce bus bandwidth at 256 MB and the latency of a 4-byte all-reduce.
On the CPU the same block is written (gloo instead of NCCL, RAM instead of HBM, no allocation
probe): enough to test the command, not a device to plan a cluster on.

The block starts `from` the matching preset, so the datasheet compute and bandwidth stay the
sound bounds' figures and the measured ones feed only the estimates (cost/time.py).
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import torch
import torch.distributed as dist

from planc.backends.torch.launch import NO_MULTICAST_ENV
from planc.compiler import presets

GiB = 2**30
MiB = 2**20
# Kernels CUDA loads on first use (CUDA_MODULE_LOADING=LAZY) take memory outside the allocator
# after calibration: a Llama decode loads norms, RoPE, embedding and sampling kernels that the
# probe's GEMM and SDPA did not.
LAZY_MODULES_MARGIN = 256 * MiB
PROBE_CHUNKS = (4 * GiB, 1 * GiB, 256 * MiB, 64 * MiB, 16 * MiB, 2 * MiB)


@dataclass
class Calibration:
    device: str  # "cuda" or "cpu"
    name: str  # what torch calls the device
    preset: str | None
    world: int
    memory: int
    reserve: int
    cache: int  # L2 bytes as the driver reports them (the CPU preset's figure on the CPU)
    gemm: float
    attention: float
    hbm: float
    allreduce: float | None = None
    latency_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def _timed(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn (CUDA events on the GPU, perf_counter on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _rates(device: str, quick: bool) -> dict[str, float]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    reps = 3 if quick else 10
    # GEMM: the shape of shared/ceilings.md's first row (an MLP's up projection at 16k tokens)
    m, k, n = (256, 256, 256) if quick else (16384, 4096, 16384)
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    gemm = 2 * m * k * n / _timed(lambda: a @ b, device, reps)
    bsz, heads, seq, hd = (1, 2, 128, 32) if quick else (2, 32, 8192, 128)
    q = torch.randn(bsz, heads, seq, hd, device=device, dtype=dtype)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    attn_s = _timed(lambda: sdpa(q, q, q, is_causal=True), device, reps)
    attention = 4 * bsz * heads * seq * seq * hd / 2 / attn_s  # causal: half the FLOPs
    x = torch.empty((4 * MiB if quick else GiB) // 2, device=device, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    hbm = 2 * x.numel() * x.element_size() / _timed(lambda: y.copy_(x), device, reps)
    return {"gemm": gemm, "attention": attention, "hbm": hbm}


def _usable_cuda_bytes() -> int:
    """Bytes the caching allocator can hand out now: allocate until it fails, largest chunks
    first, then free everything."""
    held: list[torch.Tensor] = []
    total = 0
    try:
        for chunk in PROBE_CHUNKS:
            while True:
                try:
                    held.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
                except torch.cuda.OutOfMemoryError:
                    break
                total += chunk
    finally:
        held.clear()
        torch.cuda.empty_cache()
    return total


def _memory(device: str, margin: int) -> tuple[int, int, dict[str, Any]]:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        outside = total - free - torch.cuda.memory_reserved()
        usable = _usable_cuda_bytes()
        notes = {"outside_allocator_bytes": outside, "allocator_usable_bytes": usable,
                 "lazy_modules_margin_bytes": margin}
        return total, total - usable + margin, notes
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with open("/proc/self/statm") as f:  # resident pages: the interpreter, torch and its libs
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total, rss, {"resident_bytes": rss}


def _collectives(device: str, world: int, quick: bool) -> dict[str, float]:
    """All-reduce bus bandwidth (NCCL's definition: 2(n-1)/n x bytes / time) and latency."""
    dev = f"cuda:{dist.get_rank()}" if device == "cuda" else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # gloo reduces no bf16
    nbytes = MiB if quick else 256 * MiB
    big = torch.ones(nbytes // dtype.itemsize, dtype=dtype, device=dev)
    t = _timed(lambda: dist.all_reduce(big), device, 3 if quick else 10)
    tiny = torch.ones(1, dtype=torch.float32, device=dev)
    lat = _timed(lambda: dist.all_reduce(tiny), device, 5 if quick else 50, warmup=5)
    return {"allreduce": 2 * (world - 1) / world * nbytes / t, "latency_s": lat}


def _worker(rank: int, world: int, device: str, port: int, groups: tuple[int, ...],
            quick: bool, margin: int, out: Any) -> None:
    # the NCCL settings planc run uses: NVLink multicast buffers would change the reserve
    os.environ.update(NO_MULTICAST_ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        # one rank: a collective still creates the communicator, as planc run's first
        # all_gather_object does, and its memory belongs in the reserve
        coll = _collectives(device, world, quick) if world > 1 else {}
        if world == 1:
            dist.all_reduce(torch.ones(1, device="cuda:0" if device == "cuda" else "cpu"))
        # communicators at the plan's group sizes hold device memory outside the allocator
        for g in groups:
            if 1 < g < world:
                grp = dist.new_group(list(range(g)))
                if rank < g:
                    dist.all_reduce(torch.ones(1, device=f"cuda:{rank}" if device == "cuda"
                                               else "cpu"), group=grp)
        dist.barrier()
        if rank == 0:
            rates = _rates(device, quick)
            memory, reserve, notes = _memory(device, margin)
            out.put({**rates, **coll, "memory": memory, "reserve": reserve, "notes": notes})
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def preset_for(name: str) -> str | None:
    """The preset whose datasheet figures bound this device ("NVIDIA H200" -> H200)."""
    upper = name.upper().replace(" ", "_").replace("-", "_")
    for p in sorted(presets.PRESETS, key=len, reverse=True):
        if p != "CPU" and p.split("_")[0] in upper:
            return p
    return "CPU" if name == "cpu" else None


def calibrate(device: str = "cuda", world: int = 1, groups: tuple[int, ...] = (),
              quick: bool = False, margin: int | None = None) -> Calibration:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is visible: use --device cpu")
    if device == "cuda" and world > torch.cuda.device_count():
        raise RuntimeError(f"--gpus {world}: only {torch.cuda.device_count()} visible")
    margin = (LAZY_MODULES_MARGIN if device == "cuda" else 0) if margin is None else margin
    if world > 1 or device == "cuda":  # a process group of its own, as a run has
        ctx = torch.multiprocessing.get_context("spawn")
        q = ctx.SimpleQueue()
        try:
            torch.multiprocessing.start_processes(
                _worker, args=(world, device, _free_port(), groups, quick, margin, q),
                nprocs=world, join=True, start_method="spawn")
        except (torch.multiprocessing.ProcessRaisedException,
                torch.multiprocessing.ProcessExitedException) as e:  # say which rank, and why
            raise RuntimeError(f"calibration rank {e.error_index} failed: {e}") from None
        got = q.get()
    else:
        got = {**_rates(device, quick)}
        got["memory"], got["reserve"], got["notes"] = _memory(device, margin)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    got["cache"] = (torch.cuda.get_device_properties(0).L2_cache_size if device == "cuda"
                    else presets.PRESETS["CPU"]["cache"])
    notes = {"date": date.today().isoformat(), "torch": torch.__version__,
             "host": platform.node(), "groups": list(groups), **got.pop("notes")}
    return Calibration(device, name, preset_for(name), world, notes=notes, **got)


def _si(x: float, unit: str) -> str:
    for p, s in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= s:
            return f"{x / s:.1f} {p}{unit}"
    return f"{max(1, round(x))} {unit}"


def device_block(c: Calibration, name: str | None = None) -> str:
    """The `device` block a plan names (cluster `device NAME x N`), with how it was measured."""
    base = c.preset
    name = name or f"{base or 'GPU'}_calibrated"
    lines = [(f"# planc calibrate {c.notes['date']}: {c.name} ({c.world} x {c.device}), torch "
              f"{c.notes['torch']}, host {c.notes['host']}"),
             *([("# memory: what torch sees (cudaMemGetInfo); reserve: what its allocator could "
                 "not get of it"), "# (CUDA context, libraries"
                + (", NCCL communicators" if c.world > 1 else "") + ") plus a margin for "
                "kernels loaded lazily"] if c.device == "cuda" else
              [("# memory: physical RAM; reserve: this process's resident memory (the "
                "interpreter, torch)")]),
             "# gemm, attention, hbm" + (", allreduce, latency" if c.allreduce else "")
             + ": measured rates, used by estimates (the bounds keep the preset's peaks)",
             f"device {name}" + (f" from {base}" if base else "") + " {",
             f"  memory    {c.memory} B",
             f"  reserve   {c.reserve} B"]
    if not base:  # no datasheet to start from: the measured rates stand in (not upper bounds)
        lines += [f"  cache     {c.cache} B",
                  f"  compute   {_si(c.gemm, 'FLOPS')}", f"  bandwidth {_si(c.hbm, 'B/s')}"]
    lines += [f"  gemm      {_si(c.gemm, 'FLOPS')}", f"  attention {_si(c.attention, 'FLOPS')}",
              f"  hbm       {_si(c.hbm, 'B/s')}"]
    if c.allreduce:
        lines.append(f"  allreduce {_si(c.allreduce, 'B/s')}")
    if c.latency_s:
        lines.append(f"  latency   {max(1, round(c.latency_s * 1e6))} us")
    return "\n".join(lines + ["}"]) + "\n"


def to_json(c: Calibration) -> dict[str, Any]:
    return asdict(c)
