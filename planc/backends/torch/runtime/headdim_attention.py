"""Head x head_dim split attention (seed 001: `shard heads over n` + `shard head_dim over m`).

Rank (i, j) of the n x m grid holds head group i (heads/n contiguous query heads and kv_heads/n
kv heads; needs heads % n == 0 and kv_heads % n == 0) and head_dim slice j of every one of them.
The slice is `headdim_slice_indices(head_dim, m, j)` (see planc/layout/headdim.py: each RoPE pair
(i, i + head_dim/2) stays on one rank; needs head_dim % (2*m) == 0).

Two process groups are involved:
- `dim_group`: the m ranks (i, 0..m-1) that share head group i. Partial scores q_j k_j^T are
  summed over it (all_reduce, float32 even for bf16 inputs: the partial dot products are the
  numerically delicate part).
- the output groups: o_proj is row-parallel over the (head group x head_dim slice) rows of its
  input, so rank (i, j) multiplies its attention slice by o_proj's columns
  `headdim_shard_indices(heads, head_dim, n, i, m, j)` and the m*n partial outputs are summed.

Shapes (local dims marked *):
- q: [batch, heads/n *, s, head_dim/m *]; k, v: [batch, kv_heads/n *, s, head_dim/m *], RoPE
  applied with `apply_rope_slice` (cos/sin columns picked by `rope_slice`).
- headdim_attention output: [batch, heads/n *, s, head_dim/m *], this rank's slice of the heads'
  output in the same dims order.
- o_proj_row_parallel: attn as above, w_o_local [hidden, heads/n * head_dim/m] -> [batch, s,
  hidden], the full sum, replicated on every rank of the groups.

Bytes each rank sends per call (ring all-reduce of B bytes over g ranks sends 2*(g-1)/g * B):
- headdim_attention: one all_reduce over dim_group (g = m) of the float32 scores,
  B = batch * heads/n * s_q * s_k * 4.
- o_proj_row_parallel: one all_reduce per group in `groups` of B = batch * s * hidden *
  elem_bytes.

Why o_proj takes a list of groups: the sum over all m*n ranks can be done as one all_reduce
over the whole n x m group (fewer bytes per rank: 2*(mn-1)/mn * B, against 2*(m-1)/m * B +
2*(n-1)/n * B for the two levels) or hierarchically, first over dim_group then over the head
group (the seed's "hierarchical aggregation", useful when dim_group is inside a node). The result
is the same; the emitter passes `(world_group,)` by default, which is the clearer and cheaper
choice on a flat network, and `(dim_group, head_group)` to follow the seed literally.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from planc.layout.headdim import headdim_slice_indices
from planc.layout.slices import pieces


def rope_slice(
    cos: torch.Tensor, sin: torch.Tensor, head_dim: int, m: int, j: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos/sin columns that match slice j of m.

    Full-width tables ([..., head_dim], as HF's LlamaRotaryEmbedding returns: cat(f, f)) give
    [..., head_dim/m] for `apply_rope_slice`. Half-width tables ([..., head_dim/2], one angle per
    pair, as layers.rope_tables keeps them) give [..., head_dim/(2m)]: the slice's pairs are the
    contiguous range [j*d/(2m), (j+1)*d/(2m)) of the pair index, so a rotate-half RoPE written
    for half tables works unchanged on the local slice.
    """
    if cos.shape[-1] == head_dim // 2:
        headdim_slice_indices(head_dim, m, j)  # validates the split
        lo, hi, _ = pieces("rope_paired", head_dim, m, j)[0]  # the slice's pair indices
        return cos[..., lo:hi], sin[..., lo:hi]
    if cos.shape[-1] != head_dim:
        raise ValueError(f"cos has {cos.shape[-1]} columns, expected {head_dim} or {head_dim // 2}")
    idx = torch.tensor(headdim_slice_indices(head_dim, m, j), device=cos.device)
    return cos.index_select(-1, idx), sin.index_select(-1, idx)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Llama's rotate_half; on a headdim slice it pairs the slice's halves, as on the full dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope_slice(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on a local slice x [b, heads, s, d/m] with sliced cos/sin [b, s, d/m] or [s, d/m]."""
    if cos.dim() == 3:  # [b, s, d] as LlamaRotaryEmbedding returns: broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def _causal_mask(sq: int, sk: int, device: torch.device) -> torch.Tensor:
    """Bottom-right aligned: query i is at position sk - sq + i (decode with a longer K/V)."""
    q_pos = torch.arange(sk - sq, sk, device=device)
    return torch.arange(sk, device=device)[None, :] <= q_pos[:, None]


def headdim_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dim_group: dist.ProcessGroup | None,
    *,
    causal: bool = True,
    scale: float | None = None,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """This rank's head_dim slice of softmax(q k^T / sqrt(head_dim) [+ mask]) v.

    head_dim is the full head dimension: head_dim/m (local) times dim_group's size.
    dim_group None means m == 1: no head_dim split, no communication. keys: which keys each
    row sees, bool broadcastable to [b, 1, 1, sk] (a decode step's padded cache slots).
    """
    m = dist.get_world_size(dim_group) if dim_group is not None else 1
    b, heads, sq, d_local = q.shape
    kv_heads, sk = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    scale = (d_local * m) ** -0.5 if scale is None else scale
    # GQA without copying K/V: query head h = kv * groups + g uses kv head h // groups.
    qg = q.float().reshape(b, kv_heads, groups, sq, d_local)
    scores = qg @ k.float().unsqueeze(2).transpose(-1, -2)  # [b, kv, g, sq, sk], partial
    if m > 1:
        dist.all_reduce(scores, group=dim_group)  # sum over the head_dim slices
    # Scale, mask and softmax in place: the float32 scores are the block's largest buffer.
    scores.mul_(scale)
    if causal:
        scores.masked_fill_(~_causal_mask(sq, sk, q.device), float("-inf"))
    if keys is not None:
        scores.masked_fill_(~keys.reshape(keys.shape[0], 1, 1, 1, sk), float("-inf"))
    scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    scores.div_(scores.sum(dim=-1, keepdim=True))
    probs = scores.to(v.dtype)  # the same tensor in float32
    del scores
    out = probs @ v.unsqueeze(2)  # [b, kv, g, sq, d_local]
    return out.reshape(b, heads, sq, d_local).to(q.dtype)


def o_proj_row_parallel(
    attn: torch.Tensor,
    w_o_local: torch.Tensor,
    groups: Sequence[dist.ProcessGroup],
) -> torch.Tensor:
    """Row-parallel o_proj: attn [b, heads/n, s, d/m] times this rank's o_proj columns, summed.

    w_o_local = o_proj.weight[:, headdim_shard_indices(...)], shape [hidden, heads/n * d/m].
    groups: all_reduce over each in order, e.g. (dist.group.WORLD,) or (dim_group, head_group).
    """
    b, heads, s, d_local = attn.shape
    x = attn.transpose(1, 2).reshape(b, s, heads * d_local)  # head-major, as the indices
    out = x @ w_o_local.t()
    for group in groups:
        dist.all_reduce(out, group=group)
    return out
