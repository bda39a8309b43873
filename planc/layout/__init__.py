"""planc.layout: the single source of placement, torch-free and z3-free.

Who holds what is written here once and imported by the compiler (lower, decode), the verifier
(coverage and divisibility obligations, symbolically), the renderer (`show`) and the torch
runtime (every rank's slices, groups and stage):
  mesh.py      rank <-> coordinates, the index of a rank along a dim's axes, axis groups;
  slices.py    even, zig-zag and RoPE-paired slices, concrete and symbolic; kv heads of a slice;
  stages.py    pipeline stage ranges;
  moe.py       the MoE routing mode and the experts / ffn rows a rank holds;
  compress.py  compressed weight formats and their bytes;
  schedule.py  the decode schedule: pipeline rounds, KV cache slots per step.
"""
