"""Weight compression for linears: int8 weight-only (symmetric per-output-channel scales), 2:4
semi-structured sparsity, and both together; `CompressedLinear` stores a weight compressed and
computes y = x @ W.T with it.

Storage (what `CompressedLinear.stored_tensors` holds; planc/layout/compress.py gives the byte
formulas):
- int8: q int8 [out, in] and scale [out] in the weight's dtype, W ~= q * scale[:, None].
- 2:4: values [out, in/2] (the 2 kept of every 4 consecutive inputs, in order) and metadata
  uint8 [out, in/8]: per group of 4 one nibble (lo 2 bits: index of the first kept element,
  hi 2 bits: of the second), two groups per byte. That is 2 bits per kept element, the same
  in/8 bytes per row that torch's CUDA formats store (CUTLASS: int16 [out, in/16], int32
  [out, in/32] for int8; cuSPARSELt: values and metadata in one buffer of in*out*9/16 elements
  for 16-bit dtypes, in*out*10/16 for int8), without their swizzle.
- int8 + 2:4: the pruned weight quantized, its int8 values packed as above, plus the scales.

Compute:
- CPU: dense math on the decompressed weight (int8: x @ (q * scale).T; 2:4: a masked dense
  weight rebuilt from values and metadata).
- CUDA int8: dequantize-then-matmul, F.linear(x, q.to(x.dtype)) * scale (int8 -> 16-bit is
  exact; the per-row scale moves to the output columns). torch._weight_int8pack_mm exists on
  CUDA in torch 2.11 and is correct, but on an H100 (bf16, 4096x4096 weight) it took 0.62 ms
  for 16 tokens and 297 ms for 8192 tokens against 0.03 / 0.35 ms dense, so it is not used.
  torch._int_mm is not used either: it needs int8 activations, which changes the numerics of
  a weight-only scheme.
- CUDA 2:4: torch.sparse.to_sparse_semi_structured on the pruned weight when the dtype is
  float16/bfloat16 and both dims are multiples of 64 (the CUTLASS/cuSPARSELt minimum shapes);
  then F.linear dispatches to the sparse kernel and only its compressed tensor is kept. torch's
  default there is cuSPARSELt (seen on an H100 with torch 2.11: one bf16 buffer [out, in*9/16]);
  its CUTLASS kernel runs on compute capability 8.x only. Measured there (bf16): 16384x4096
  weight, 8192 tokens 1.21 ms vs 1.63 dense; 4096x4096, 8192 tokens 0.45 vs 0.35; 16 tokens
  ~0.55 ms vs 0.03-0.05 (per-call cuSPARSELt plan setup). float32 is excluded on purpose:
  torch's float32 CUTLASS format is 1:2, not 2:4, and cuSPARSELt's table has no float32.
- CUDA int8 + 2:4: weights stay int8 + metadata (memory as planc/layout/compress.py says) and are
  decompressed per call; no weight-only int8 sparse kernel exists in torch.

Buffers one call y = linear(x) allocates beyond its output y [T, out] (element size e of the
run dtype; the weight's stored tensors are resident, see planc/layout/compress.py):
- int8, CUDA: the dense copy q.to(e) [out, in]*e, freed after the GEMM; the scale is applied to y
  in place. CPU: dequantised weight [out, in]*4 (float32), then its cast [out, in]*e (the same
  tensor for float32), freed after the GEMM.
- 2:4 with the CUDA sparse kernel: nothing but the kernel's workspace.
- 2:4 decompressed per call (CPU; CUDA when the kernel does not apply): unpack_2_4 holds the
  dense weight [out, in]*e beside a few [out, in/4] index temporaries (uint8 nibbles and masks,
  one [out, in/4]*e `where` result at a time), then the GEMM.
- int8 + 2:4: the unpack above in int8 ([out, in] bytes), then dequantisation as for int8 on CPU
  ([out, in]*4 float32, then its cast to e), freed after the GEMM.

`make_linear(ctx, weight, role, input_group)` is how the runtime's layers get their linears
(layers.make_linear calls it when RunConfig compresses that role): int8 on every linear, 2:4 on
"mlp" ones (dense MLPs and experts). A row-parallel shard (input dim split over input_group)
gets the int8 scales of the whole row: one all_reduce(MAX) of max|w_row| [out] float32 over
input_group at load time. So every plan stores the same compressed weights, those that
reference.py builds on one device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F

if TYPE_CHECKING:
    from planc.backends.torch.runtime.dist import RankContext


def quantize_int8(
    w: torch.Tensor, row_absmax: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q int8 [out, in], scale [out] in w.dtype) with
    scale = max|w_row| / 127, so |w - q * scale| <= scale / 2 elementwise.

    row_absmax (float32 [out]): max|w_row| over the whole row when w holds only some of its
    columns (a row-parallel shard), so that every shard gets the scale of the unsharded weight.
    """
    w32 = w.float()
    amax = w32.abs().amax(dim=1) if row_absmax is None else row_absmax.float()
    exact = amax / 127
    scale = exact.to(w.dtype)
    # A scale rounded down in a narrow dtype would push |w/scale| past 127 (clamped, error
    # above scale/2): step such scales up by one ulp of their dtype.
    low = scale.float() < exact
    scale = torch.where(low, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    safe = torch.where(scale.float() > 0, scale.float(), torch.ones_like(exact))
    q = torch.round(w32 / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float().mul_(scale.float()[:, None]).to(scale.dtype)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """y = x @ dequantize_int8(q, scale).T."""
    if x.is_cuda:  # scale the output columns instead of the weight rows: one less pass
        return F.linear(x, q.to(x.dtype)).mul_(scale.to(x.dtype))
    return F.linear(x, dequantize_int8(q, scale).to(x.dtype))


def mask_2_4(w: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the 2 largest |w| of every 4 consecutive elements of each row."""
    out_f, in_f = w.shape
    if in_f % 4:
        raise ValueError(f"2:4 sparsity needs in_features % 4 == 0, got {in_f}")
    groups = w.detach().abs().float().view(out_f, in_f // 4, 4)
    keep = torch.topk(groups, 2, dim=-1).indices
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=w.device)
    return mask.scatter_(-1, keep, True).view(out_f, in_f)


def prune_2_4(w: torch.Tensor) -> torch.Tensor:
    """w with all but the 2 largest |w| of every 4 consecutive inputs set to zero."""
    return w * mask_2_4(w)


def pack_2_4(w: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [out, in/2], metadata uint8 [out, in/8]) of w's elements where mask (exactly 2
    of every 4) is set."""
    out_f, in_f = w.shape
    if in_f % 8:
        raise ValueError(f"packed 2:4 needs in_features % 8 == 0, got {in_f}")
    m = mask.view(out_f, in_f // 4, 4)
    if not bool((m.sum(-1) == 2).all()):
        raise ValueError("mask is not 2:4 (exactly 2 of every 4)")
    pos = torch.arange(4, device=w.device).expand_as(m)
    idx = pos[m].view(out_f, in_f // 4, 2)  # ascending kept positions per group
    values = torch.gather(w.view(out_f, in_f // 4, 4), -1, idx).reshape(out_f, in_f // 2)
    nibble = (idx[..., 0] | (idx[..., 1] << 2)).view(out_f, in_f // 8, 2)
    meta = (nibble[..., 0] | (nibble[..., 1] << 4)).to(torch.uint8)
    return values.contiguous(), meta


def unpack_2_4(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Dense [out, in] with zeros where pack_2_4 dropped elements.

    Built one position of the 4 at a time with uint8 index arithmetic, so the transients beside
    the dense result are a few [out, in/4] tensors (no int64 scatter index of 4*out*in bytes).
    """
    out_f, half = values.shape
    nibble = torch.stack((meta & 15, meta >> 4), dim=-1).view(out_f, half // 2)
    first, second = nibble & 3, nibble >> 2
    kept = values.view(out_f, half // 2, 2)
    dense = values.new_zeros(out_f, half // 2, 4)
    for p in range(4):
        dense[..., p] = torch.where(first == p, kept[..., 0], 0)
        dense[..., p] += torch.where(second == p, kept[..., 1], 0)
    return dense.view(out_f, half * 2)


def semi_structured_ok(w: torch.Tensor) -> bool:
    """Whether torch's CUDA 2:4 kernels take this weight (see the module docstring)."""
    return (
        w.is_cuda
        and w.dtype in (torch.float16, torch.bfloat16)
        and w.shape[0] % 64 == 0
        and w.shape[1] % 64 == 0
        and hasattr(torch.sparse, "to_sparse_semi_structured")
        and torch.cuda.get_device_capability(w.device) >= (8, 0)
    )


class CompressedLinear(torch.nn.Module):
    """y = x @ W.T with W stored as compress says (no bias: llama/mixtral linears have none).
    Build it on the device it runs on (the CUDA sparse weight is made at construction).
    sparse_kernel=False keeps a 2:4 weight packed on CUDA too (decompressed per call).
    row_absmax: see quantize_int8 (row-parallel shards)."""

    # Buffers, present according to the format (see stored_tensors).
    weight: torch.Tensor
    scale: torch.Tensor
    values: torch.Tensor
    meta: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        int8: bool = False,
        sparse_2_4: bool = False,
        sparse_kernel: bool = True,
        row_absmax: torch.Tensor | None = None,
    ):
        super().__init__()
        self.int8, self.sparse_2_4 = int8, sparse_2_4
        self.dtype = weight.dtype
        self.out_features, self.in_features = weight.shape
        w = weight.detach()
        self.semi: torch.Tensor | None = None  # CUDA semi-structured weight, when used
        if sparse_2_4:
            mask = mask_2_4(w)
            w = w * mask
            if not int8 and sparse_kernel and semi_structured_ok(w):
                self.semi = _to_semi_structured(w)
        if int8:
            # 2:4 keeps the largest |w| of every group, so the pruned row's max is the row's.
            q, scale = quantize_int8(w, row_absmax)
            self.register_buffer("scale", scale)
            w = q
        if sparse_2_4 and self.semi is None:
            values, meta = pack_2_4(w, mask)
            self.register_buffer("values", values)
            self.register_buffer("meta", meta)
        elif self.semi is None:
            self.register_buffer("weight", w.contiguous())

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        tensors = dict(self.named_buffers())
        if self.semi is not None:
            tensors["semi"] = self.semi
        return tensors

    def stored_bytes(self) -> int:
        total = 0
        for name, t in self.stored_tensors().items():
            if name == "semi":  # count the compressed buffers inside the tensor subclass
                total += sum(p.numel() * p.element_size() for p in _semi_parts(t))
            else:
                total += t.numel() * t.element_size()
        return total

    def dense_weight(self) -> torch.Tensor:
        """The effective weight [out, in] in the original dtype (pruned and/or dequantized)."""
        if self.semi is not None:
            return self.semi.to_dense()
        w = unpack_2_4(self.values, self.meta) if self.sparse_2_4 else self.weight
        return dequantize_int8(w, self.scale) if self.int8 else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.semi is not None:  # the sparse kernels take 2-D inputs
            y = F.linear(x.reshape(-1, self.in_features), self.semi)
            return y.reshape(*x.shape[:-1], self.out_features)
        if self.int8 and not self.sparse_2_4:
            return int8_linear(x, self.weight, self.scale)
        return F.linear(x, self.dense_weight().to(x.dtype))


def _to_semi_structured(w: torch.Tensor) -> torch.Tensor | None:
    """torch's default 2:4 format (cuSPARSELt; CUTLASS only if _FORCE_CUTLASS, and its kernel
    runs on compute capability 8.x only), or None where this torch build cannot make one."""
    try:
        return torch.sparse.to_sparse_semi_structured(w.contiguous())
    except RuntimeError:  # e.g. torch built without cuSPARSELt
        return None


def _semi_parts(t: torch.Tensor) -> list[torch.Tensor]:
    names = ("packed", "meta", "packed_t", "meta_t", "compressed_swizzled_bitmask")
    return [p for p in (getattr(t, n, None) for n in names) if p is not None]


def make_linear(
    ctx: RankContext,
    weight: torch.Tensor,
    role: str,
    input_group: dist.ProcessGroup | None = None,
) -> CompressedLinear:
    """The compressed linear RunConfig asks for (see the module docstring); collective over
    input_group when the weight is int8 and row-parallel."""
    int8 = ctx.cfg.compress_int8
    sparse = ctx.cfg.compress_mlp_2_4 and role == "mlp"
    out_f, in_f = weight.shape
    if sparse and in_f % 8:
        raise ValueError(
            f"2:4 sparsity on a local {role} weight [{out_f}, {in_f}]: its input width {in_f} "
            "must be a multiple of 8 (groups of 4, two 4-bit indices per byte); shard ffn over "
            "fewer ranks or use an ffn divisible by 8 per rank"
        )
    row_absmax = None
    if int8 and input_group is not None:
        row_absmax = weight.detach().abs().amax(dim=1).float()
        dist.all_reduce(row_absmax, op=dist.ReduceOp.MAX, group=input_group)
    return CompressedLinear(weight, int8=int8, sparse_2_4=sparse, row_absmax=row_absmax)
