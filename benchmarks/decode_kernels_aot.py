"""Compile decode_kernels' Triton kernels for a CUDA architecture without a GPU (triton's bundled
ptxas), so that a kernel that does not compile is caught before device time is spent.

    PYTHONPATH=$PWD python benchmarks/decode_kernels_aot.py [--arch 90]

Not a test: the torch test tier imports triton in interpreter mode (tests/torch/
test_decode_kernels.py), and kernels cannot be compiled for a GPU in that process. The
signature strings follow triton 3.9's ASTSource (other versions may want other forms).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planc.backends.torch.runtime import decode_kernels as dk

ATTN_ARGS = ["*{t}", "*{t}", "*{t}", "*{i}", "*i32", "i32", "*fp32", "*fp32", "fp32"] + ["i32"] * 14
MERGE_ARGS = ["*fp32", "*fp32", "*{t}"] + ["i32"] * 7


def compile_one(kernel: object, args: list[str], consts: dict, arch: int) -> tuple[int, int]:
    """(cubin bytes, shared memory bytes) of one specialisation."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(zip(kernel.arg_names, args))
    sig.update({k: "constexpr" for k in consts})
    constexprs = {(kernel.arg_names.index(k),): v for k, v in consts.items()}
    c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                       target=GPUTarget("cuda", arch, 32))
    return len(c.asm["cubin"]), c.metadata.shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability (90: H100/H200)")
    args = ap.parse_args()
    if not dk.available():
        raise SystemExit("triton is not installed")
    if os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("unset TRITON_INTERPRET: interpreter kernels do not compile")
    attn, merge = dk._kernels()
    for t, i, g in (("bf16", "i32", 4), ("fp16", "i64", 1), ("fp32", "i32", 4)):
        start = time.perf_counter()
        consts = {"KV": 8, "G": g, "G_PAD": dk.MIN_G, "D": 128, "BLOCK_D": 128,
                  "BLOCK_N": dk.BLOCK_N, "SPLITS": 4, "DOT_F32": t == "fp32"}
        cubin, shared = compile_one(attn, [a.format(t=t, i=i) for a in ATTN_ARGS], consts,
                                    args.arch)
        print(f"attention {t} lengths {i} g={g}: cubin {cubin} B, shared {shared} B, "
              f"{time.perf_counter() - start:.1f} s")
        consts = {"HEADS": 32, "D": 128, "BLOCK_D": 128, "SPLITS": 33, "S_PAD": 64}
        cubin, _ = compile_one(merge, [a.format(t=t) for a in MERGE_ARGS], consts, args.arch)
        print(f"merge {t}: cubin {cubin} B")


if __name__ == "__main__":
    main()
