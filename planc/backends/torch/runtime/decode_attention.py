"""Flash-decoding: attention of one new query per sequence over a sequence-sharded KV cache
(seq_attention.SeqCore's decode step). Each rank of the sequence group computes its (out,
log-sum-exp) over its own filled slots, one all_gather of [rows, heads, 1, head_dim + 1]
float32 over the group carries both, and `lse_merge` combines them: every rank ends with the
same output. With prompts of different lengths a mask says which slots each row sees.

The KV cache itself belongs to the attention block (layers.Attention, given its rows of the
cache by the decode model, model.StageModel). Memory: planc/cost/memory.py's `layer_program` run as a
decode step (compiler/decode.step_program): the attention terms with one token per sequence,
and decode_partials, the gathered (out, lse) of every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from planc.backends.torch.runtime.ring_attention import attention_with_lse


def lse_merge(outs: Tensor, lses: Tensor) -> Tensor:
    """Merge partial attention outputs over disjoint key sets (flash-decoding).

    outs [R, ..., d] and lses [R, ...] (natural-log sum of exp of the scaled scores of each
    part's keys) in float32 -> softmax over the union of the keys times V, [..., d]:
    sum_r exp(lse_r - L) out_r with L = log sum_r exp(lse_r). A part with no keys (lse -inf)
    weighs nothing.
    """
    top = lses.amax(dim=0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(lses - top)  # [R, ...], the largest part's weight is 1
    num = (outs * w.unsqueeze(-1)).sum(dim=0)
    return num / w.sum(dim=0).unsqueeze(-1)


def masked_attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, keys: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """(out float32 [b, h, 1, d], lse [b, h, 1]) of q over the slots `keys` [b, 1, 1, n] lets
    each row see. A row that sees none of this rank's slots gets out 0 and lse -inf, which
    lse_merge weighs 0."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2) * scale).masked_fill(~keys, float("-inf"))
    lse = scores.logsumexp(dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num_(0.0)  # -inf - -inf: no slot
    return probs @ v.float(), lse


def flash_decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    group: dist.ProcessGroup,
    scale: float,
    keys: Tensor | None = None,
) -> Tensor:
    """Attention of q over the union of every group rank's k / v (the sequence-sharded cache),
    over the slots `keys` lets each row see (all when None): local (out, lse), one all_gather
    of both in one float32 message, lse_merge."""
    if keys is None:
        out, lse = attention_with_lse(q, k, v, causal=False, scale=scale)
    else:
        out, lse = masked_attention_with_lse(q, k, v, keys, scale)
    d = out.shape[-1]
    msg = torch.cat((out, lse.unsqueeze(-1)), dim=-1)  # [b, heads, sq, d + 1]
    del out, lse
    world = dist.get_world_size(group)
    # Concatenated along dim 0 (the shape gloo's all_gather_into_tensor takes), viewed per rank.
    gathered = msg.new_empty((world * msg.shape[0], *msg.shape[1:]))
    dist.all_gather_into_tensor(gathered, msg, group=group)
    del msg
    gathered = gathered.view(world, -1, *gathered.shape[1:])
    return lse_merge(gathered[..., :d], gathered[..., d]).to(q.dtype)
