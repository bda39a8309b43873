"""Sequence-parallel attention (seed 002): ring attention and its all-gather alternative.

Layouts. The sequence is split over the ranks of one process group `group` of size R.
- q: [batch, heads, s_local, head_dim]; k, v: [batch, kv_heads, s_local, head_dim], with
  heads % kv_heads == 0 (GQA: query head h uses kv head h // (heads // kv_heads), as Hugging
  Face's repeat_kv). Only the sequence dim (2) is local; s_local = seq / R. RoPE must already
  be applied with the global positions from `positions_for_rank`.
- Contiguous mode: rank r holds tokens [r*s_local, (r+1)*s_local).
- Zig-zag mode (causal load balancing): the sequence is cut into 2R chunks and rank r holds
  chunk r followed by chunk 2R-1-r, so every rank does the same causal work. Needs seq % 2R == 0.
  `shard_seq` / `unshard_seq` (and the zigzag_* names) cut and reassemble tensors.
- Output: [batch, heads, s_local, head_dim] in q's dtype, the same tokens as q.

ring_attention: R steps. At step t rank r computes on the K/V block that started on rank
(r - t) mod R while the next block is already in flight: one `dist.batch_isend_irecv` per step
sends the current K/V (stacked in one buffer) to rank r+1 and receives from rank r-1. Each block
yields (out, lse) in float32 and is merged with the log-sum-exp online softmax. Causal blocks
are full, diagonal (causal within the block) or skipped; skipped blocks still travel.
Bytes each rank sends per call: (R-1) * 2 * batch * kv_heads * s_local * head_dim * elem_bytes
(and receives the same), point-to-point to its ring neighbour only.

gather_attention: one all_gather of the stacked K/V over `group`, then one local SDPA with a
boolean mask built from global positions. Bytes each rank sends per call with a ring all-gather:
the same (R-1) * 2 * batch * kv_heads * s_local * head_dim * elem_bytes, but every rank holds
the whole K/V (R times the local K/V memory) and does not overlap communication with compute.

Which kernel computes a block's (out, lse), chosen by `lse_backend`:
- CUDA, fp16/bf16, head_dim % 8 == 0 and <= 128, cuDNN attention enabled:
  `aten._scaled_dot_product_cudnn_attention` (compute_log_sumexp=True), the kernel SDPA itself
  picks on Hopper for these shapes, so a ring block runs at one GPU's SDPA rate (the flash
  kernel below reached about 60% of it on an H200, which capped the ring at 58% of the ideal);
- CUDA, fp16/bf16, head_dim % 8 == 0 and <= 256 otherwise: `aten._scaled_dot_product_flash_attention`;
- CUDA otherwise (e.g. float32): `aten._scaled_dot_product_efficient_attention`
  (compute_log_sumexp=True; its lse is padded to a multiple of 32 rows and is cut);
- CPU: `aten._scaled_dot_product_flash_attention_for_cpu` when the op exists;
- "explicit": float32 matmul + logsumexp + softmax, used when no fused op exists or a fused op
  raises (a warning is issued once).
All of them return the natural-log LSE per query row (cuDNN's as [b, h, s, 1], reshaped). The
flash (bf16/fp16) and efficient (float32) LSEs matched the explicit kernel to < 1e-6 relative
on an H100 (GQA, causal diagonal blocks, sq != sk); `benchmarks/peers.py --modes lse_kernels`
compares every CUDA backend with the explicit kernel on the GPU machine; CPU tests cover
"cpu_flash" and "explicit".

Merging. A block's output stays in the kernel's dtype; the float32 accumulator takes it in two
passes (scale by exp(lse - new_lse), add block x exp(block_lse - new_lse)), without a float32
copy of the block: 8 + 2e bytes per element beyond the kernel's own, against 32 + 2e before.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from planc.layout.slices import pieces_per_part, zigzag_chunks

Backend = str  # "auto" | "cudnn" | "flash" | "efficient" | "cpu_flash" | "explicit"
_warned: set[str] = set()


# ---- sequence layout -------------------------------------------------------------------------


def _check_seq(seq: int, world: int, zigzag: bool) -> None:
    parts = world * pieces_per_part("zigzag" if zigzag else "even")
    if seq % parts != 0:
        mode = "zig-zag (2 chunks per rank)" if zigzag else "contiguous"
        raise ValueError(f"seq ({seq}) is not divisible by {parts} for {mode} sequence sharding")


def zigzag_shard(x: torch.Tensor, rank: int, world: int, dim: int) -> torch.Tensor:
    """Rank's zig-zag part of x along dim: chunk rank, then chunk 2*world-1-rank."""
    _check_seq(x.shape[dim], world, True)
    chunks = x.chunk(2 * world, dim=dim)
    first, second = zigzag_chunks(world, rank)
    return torch.cat((chunks[first], chunks[second]), dim=dim)


def zigzag_unshard(chunks_list: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """Inverse of zigzag_shard: the full tensor from every rank's local part, in rank order."""
    firsts, seconds = zip(*(c.chunk(2, dim=dim) for c in chunks_list))
    return torch.cat(list(firsts) + list(reversed(seconds)), dim=dim)


def shard_seq(x: torch.Tensor, rank: int, world: int, dim: int, zigzag: bool) -> torch.Tensor:
    if zigzag:
        return zigzag_shard(x, rank, world, dim)
    _check_seq(x.shape[dim], world, False)
    return x.chunk(world, dim=dim)[rank]


def unshard_seq(chunks_list: Sequence[torch.Tensor], dim: int, zigzag: bool) -> torch.Tensor:
    if zigzag:
        return zigzag_unshard(chunks_list, dim)
    return torch.cat(list(chunks_list), dim=dim)


def positions_for_rank(seq: int, rank: int, world: int, zigzag: bool) -> torch.Tensor:
    """Global token positions (int64, [seq // world]) of rank's local tokens: RoPE position ids."""
    return shard_seq(torch.arange(seq), rank, world, 0, zigzag)


# ---- one block: attention output and log-sum-exp --------------------------------------------


def lse_backend(q: torch.Tensor) -> Backend:
    """The fused kernel `attention_block` uses for tensors like q (see module docstring)."""
    if q.is_cuda:
        d = q.shape[-1]
        if q.dtype in (torch.float16, torch.bfloat16) and d % 8 == 0:
            if d <= 128 and torch.backends.cuda.cudnn_sdp_enabled():
                return "cudnn"
            if d <= 256:
                return "flash"
        return "efficient"
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return "cpu_flash"
    return "explicit"


def _repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def explicit_attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference block kernel in float32. causal: query i sees keys j <= i (square blocks)."""
    scores = q.float() @ k.float().transpose(-1, -2) * scale
    if causal:
        sq, sk = scores.shape[-2:]
        visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
    lse = scores.logsumexp(dim=-1)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ v.float()
    return out, lse


def attention_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale [+ causal mask]) v for one block, and the LSE of each query row.

    Returns (out [b, h, sq, d] in the kernel's dtype: q's for the fused kernels, float32 for the
    explicit one; lse float32 [b, h, sq]). k/v may have fewer heads (GQA). causal is only used
    for square diagonal blocks, where top-left alignment is the right one.
    """
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    name = lse_backend(q) if backend == "auto" else backend
    try:
        if name == "cudnn":
            res = torch.ops.aten._scaled_dot_product_cudnn_attention(
                q, k, v, None, True, 0.0, causal, False, scale=scale
            )
            return res[0], res[1].reshape(q.shape[:3]).float()
        if name == "flash":
            res = torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, 0.0, causal, False, scale=scale
            )
            return res[0], res[1].float()
        if name == "efficient":
            out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, None, True, 0.0, causal, scale=scale
            )
            return out, lse[..., : q.shape[2]].float()
        if name == "cpu_flash":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, causal, scale=scale
            )
            return out, lse.float()
    except RuntimeError as err:  # unsupported shape/dtype for the fused kernel
        if name not in _warned:
            _warned.add(name)
            warnings.warn(f"{name} attention kernel failed ({err}); using the explicit kernel")
    return explicit_attention_with_lse(q, k, v, causal, scale)


def attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """attention_block with the output in float32: (out [b, h, sq, d], lse [b, h, sq])."""
    out, lse = attention_block(q, k, v, causal=causal, scale=scale, backend=backend)
    return out.float(), lse


def merge_attention(
    out: torch.Tensor, lse: torch.Tensor, blk_out: torch.Tensor, blk_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax merge of two partial results over disjoint key sets (float32)."""
    new_lse = torch.logaddexp(lse, blk_lse)
    new_out = out * torch.exp(lse - new_lse).unsqueeze(-1)
    new_out += blk_out * torch.exp(blk_lse - new_lse).unsqueeze(-1)
    return new_out, new_lse


def merge_attention_(
    out: torch.Tensor, lse: torch.Tensor, blk_out: torch.Tensor, blk_lse: torch.Tensor
) -> None:
    """merge_attention in place: out and lse (float32, views allowed) take the merged result.
    blk_out may be 16-bit: it is read once, never copied to float32. Temporaries are
    [.., rows] vectors only."""
    new_lse = torch.logaddexp(lse, blk_lse)
    out.mul_(torch.exp(lse - new_lse).unsqueeze(-1))
    out.addcmul_(blk_out, torch.exp(blk_lse - new_lse).unsqueeze(-1))
    lse.copy_(new_lse)


# ---- ring attention --------------------------------------------------------------------------


def _visible_blocks(
    rank: int, src: int, s_local: int, causal: bool, zigzag: bool
) -> list[tuple[slice, slice, bool]]:
    """(query rows, key rows, causal-within-block) that rank's queries see of src's K/V block.

    Contiguous: earlier ranks are fully visible, the own block is causal, later ones masked.
    Zig-zag: rank r holds chunks (r, 2R-1-r). Own block: positions increase along the local
    order, so a plain causal mask over the local tokens is exact. src < r: src's chunk src
    precedes both our chunks and its chunk 2R-1-src follows both, so all our queries see its
    first half. src > r: both of src's chunks lie after our chunk r and before our chunk
    2R-1-r, so only our second half sees them, fully.
    """
    full, half = slice(None), s_local // 2
    if not causal:
        return [(full, full, False)]
    if src == rank:
        return [(full, full, True)]
    if not zigzag:
        return [(full, full, False)] if src < rank else []
    if src < rank:
        return [(full, slice(0, half), False)]
    return [(slice(half, None), full, False)]


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    *,
    causal: bool = True,
    zigzag: bool = True,
    scale: float | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Attention of the local queries over the whole sequence, K/V passed round the ring."""
    group = group or dist.group.WORLD
    assert group is not None, "torch.distributed is not initialised"
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s_local = q.shape[2]
    if zigzag and causal and s_local % 2 != 0:
        raise ValueError(f"zig-zag needs an even local sequence, got {s_local}")
    send_to = dist.get_global_rank(group, (rank + 1) % world)
    recv_from = dist.get_global_rank(group, (rank - 1) % world)

    kv = torch.stack((k, v)).contiguous()  # one message per step instead of two
    out = lse = None
    for step in range(world):
        reqs, nxt = [], None
        if step + 1 < world:  # post the next transfer before computing on the current block
            nxt = torch.empty_like(kv)
            reqs = dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, kv, send_to, group),
                    dist.P2POp(dist.irecv, nxt, recv_from, group),
                ]
            )
        src = (rank - step) % world
        for rows, cols, blk_causal in _visible_blocks(rank, src, s_local, causal, zigzag):
            blk_out, blk_lse = attention_block(
                q[:, :, rows],
                kv[0][:, :, cols],
                kv[1][:, :, cols],
                causal=blk_causal,
                scale=scale,
                backend=backend,
            )
            if out is None:  # step 0 always covers every query row: the accumulators
                out, lse = blk_out.float(), blk_lse
            else:
                assert lse is not None
                merge_attention_(out[:, :, rows], lse[:, :, rows], blk_out, blk_lse)
            del blk_out, blk_lse
        for req in reqs:
            req.wait()
        if nxt is not None:
            kv = nxt
    assert out is not None
    return out.to(q.dtype)


# ---- all-gather attention --------------------------------------------------------------------


def gather_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    *,
    causal: bool = True,
    zigzag: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Same result as ring_attention: all-gather K/V, then one masked SDPA on the local queries.

    K/V travel as one [s_local, 2, batch, kv_heads, head_dim] block per rank, so the gathered
    [R * s_local, 2, ...] buffer is already the full key sequence (in rank order) and k_all /
    v_all are strided views of it: no concatenation copy. The causal mask compares global
    positions, so it is right for both layouts. (SDPA picks a kernel that takes a boolean mask:
    not flash on CUDA.)
    """
    group = group or dist.group.WORLD
    assert group is not None, "torch.distributed is not initialised"
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    b, kv_heads, s_local, d = k.shape
    kv = k.new_empty((s_local, 2, b, kv_heads, d))
    kv[:, 0].copy_(k.permute(2, 0, 1, 3))
    kv[:, 1].copy_(v.permute(2, 0, 1, 3))
    gathered = kv.new_empty((world * s_local, 2, b, kv_heads, d))
    dist.all_gather_into_tensor(gathered, kv, group=group)
    del kv
    k_all = gathered[:, 0].permute(1, 2, 0, 3)  # [b, kv_heads, seq, d], last dim contiguous
    v_all = gathered[:, 1].permute(1, 2, 0, 3)
    mask = None
    if causal:
        seq = s_local * world
        q_pos = positions_for_rank(seq, rank, world, zigzag).to(q.device)
        k_pos = torch.cat([positions_for_rank(seq, r, world, zigzag) for r in range(world)])
        mask = k_pos.to(q.device)[None, :] <= q_pos[:, None]
    return F.scaled_dot_product_attention(
        q, k_all, v_all, attn_mask=mask, scale=scale, enable_gqa=kv_heads != q.shape[1]
    )
