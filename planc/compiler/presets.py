"""Built-in device presets, usable by name in a cluster or as a `from` base.

Figures are datasheet peaks (dense bf16 compute, HBM bandwidth); the verifier uses them as upper
bounds, so they must never be lower than what the hardware can do. `reserve` is memory the
runtime takes outside torch's allocator on every device (CUDA context, NCCL buffers); it is
charged in the HBM obligation and can be overridden per device. `workspace` is what libraries
allocate through torch's allocator once per device (cuBLAS), so it shows in
`max_memory_allocated` and is part of the predicted peak. `autotune` is the buffer an autotuner
allocates through it while it times a kernel's candidate tiles, a transient the peak can be
made of (the decode step's first warm-up: planc/cost/memory.first_step_tuning_bytes).
"""

from __future__ import annotations

from typing import TypedDict

GB = 10**9
MB = 10**6
TB = 10**12
GiB = 2**30

CUBLAS_WORKSPACE = 32 * 2**20  # torch's default cuBLAS workspace, allocated through its allocator
# The L2-flush buffer of Triton's timer (triton.testing.do_bench: the driver's
# get_empty_cache_for_benchmark, 256 MiB), live while triton.autotune times each candidate tile;
# seen in the CUDA allocator's trace of a one-GPU decode run on an H200 (torch 2.11.0+cu130).
TRITON_BENCH_FLUSH = 256 * 2**20


class _PresetFields(TypedDict):
    memory: int
    cache: int
    compute: int
    bandwidth: int
    reserve: int
    workspace: int
    autotune: int


class Preset(_PresetFields, total=False):
    """A preset's fields, named as DeviceSpec's (the resolver passes them as keywords)."""

    power: int


PRESETS: dict[str, Preset] = {
    # power: the SXM modules' datasheet TDP (H100 SXM5 700 W, H200 SXM 700 W, A100 SXM4 400 W)
    "H100": {"memory": 80 * GB, "cache": 50 * MB, "compute": 989 * TB,
             "bandwidth": 3_350 * GB, "reserve": 1 * GiB, "workspace": CUBLAS_WORKSPACE,
             "autotune": TRITON_BENCH_FLUSH, "power": 700},
    "H200": {"memory": 141 * GB, "cache": 60 * MB, "compute": 989 * TB,
             "bandwidth": 4_800 * GB, "reserve": 1 * GiB, "workspace": CUBLAS_WORKSPACE,
             "autotune": TRITON_BENCH_FLUSH, "power": 700},
    "A100_80GB": {"memory": 80 * GB, "cache": 40 * MB, "compute": 312 * TB,
                  "bandwidth": 2_039 * GB, "reserve": 1 * GiB, "workspace": CUBLAS_WORKSPACE,
                  "autotune": TRITON_BENCH_FLUSH, "power": 400},
    # A CPU "device" for local runs: capacities are generous placeholders so small plans fit.
    "CPU": {"memory": 16 * GB, "cache": 32 * MB, "compute": 1 * TB, "bandwidth": 50 * GB,
            "reserve": 0, "workspace": 0, "autotune": 0},
}

# Per-direction link bandwidth defaults when a cluster does not say (NVLink 4, 400G IB).
DEFAULT_INTRA = 450 * GB
DEFAULT_INTER = 50 * GB
