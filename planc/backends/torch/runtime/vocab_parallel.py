"""The embedding and the lm_head with the vocabulary split over a tensor-parallel group
(`shard vocab over tp`; Megatron's VocabParallelEmbedding and its parallel lm_head).

Each rank holds rows [start, start + n) of a vocabulary matrix [vocab, hidden], zero padded to n
(planc/layout/vocab.py). Every rank of the group holds the same tokens and hidden states (the
vocab axes carry no batch or sequence split), so:
  - lookup: each rank looks up the ids in its rows, zeroes the rows of ids it does not hold and
    the group all-reduces (sums) [T, hidden]: one rank contributes each row and the others add
    zeros, so the result equals the unsplit lookup bit for bit;
  - greedy next token: each rank computes its logits [r, n], masks its padding to -inf, takes
    its best (logit, token id) per row, and the group all-gathers these pairs ([r, 2] float64
    per rank, exact for any token id below 2**53) and keeps the largest logit, the smallest id
    among equal ones: torch.argmax's first-index rule over the whole vocabulary, which is what
    Hugging Face's greedy decoding uses. Greedy needs only the winner, so this moves 16 bytes per
    row per rank where gathering the logits would move 4 * vocab / parts (64 KB per row for
    Llama-3 at tp 8 in float32, against 16 B);
  - sampling (temperature, top-p) needs every logit: all_logits all-gathers the parts' logits
    and drops the padding, so every rank of the group draws from the same distribution.
pick_tokens is the token choice of a decode's last stage (runtime/model.py next_tokens): greedy,
or a `choose` (textgen.sample) over all_logits.
Without a vocab split these are the plain lookup (indexing) and argmax over the full matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from planc.backends.torch.runtime import decode_gemm, decode_kernels
from planc.layout.vocab import VocabSlice

if TYPE_CHECKING:
    from planc.backends.torch.weights import ShardReader


def read_rows(reader: ShardReader, name: str, vocab: int, hidden: int, vs: VocabSlice) -> Tensor:
    """This rank's rows of a vocabulary matrix `name`, zero padded, on the rank's device."""
    rows = reader.rows(name, vs.rows, (vocab, hidden))
    if vs.pad:
        rows = torch.cat([rows, rows.new_zeros((vs.pad, hidden))])
    return reader.place(rows)


def lookup(ids: Tensor, weight: Tensor, vs: VocabSlice, group: dist.ProcessGroup | None
           ) -> Tensor:
    """Embeddings [..., hidden] of token ids [...] from this rank's rows, summed over the group."""
    if group is None:  # indexing: a gather kernel where F.embedding's index_select took
        return weight[ids]  # 7.5 us for 8 rows in a decode step (h200_decode_profile_run6_seed)
    local = ids - vs.start
    outside = (local < 0) | (local >= vs.real)
    out = F.embedding(local.masked_fill(outside, 0), weight)
    out.masked_fill_(outside.unsqueeze(-1), 0)
    dist.all_reduce(out, group=group)
    return out


def greedy_tokens(h: Tensor, weight: Tensor, vs: VocabSlice, group: dist.ProcessGroup | None
                  ) -> Tensor:
    """Greedy next tokens [r] (int64) from final-norm hidden states h [r, hidden]."""
    logits = decode_gemm.linear(h, weight)  # F.linear but in the static decode step
    if group is None:
        return first_argmax(logits)
    if vs.pad:
        logits[:, vs.real :] = float("-inf")
    best = logits.argmax(dim=-1, keepdim=True)
    mine = torch.cat([logits.gather(-1, best).double(), (best + vs.start).double()], dim=-1)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    pairs = torch.stack(parts)  # [parts, r, 2], parts in vocabulary order
    values, ids = pairs[..., 0], pairs[..., 1]
    top = values.max(dim=0).values
    return ids.masked_fill(values != top, float("inf")).min(dim=0).values.long()


_triton_argmax = False


@contextmanager
def triton_argmax(on: bool) -> Iterator[None]:
    """Within (when `on`): first_argmax runs decode_kernels.argmax_triton (the static decode
    step beside the Triton attention: on a GPU, or in Triton's interpreter in the tests)."""
    global _triton_argmax
    prev, _triton_argmax = _triton_argmax, on
    try:
        yield
    finally:
        _triton_argmax = prev


def first_argmax(logits: Tensor, chunks: int = 256) -> Tensor:
    """logits.argmax(-1) of [r, n] (the first index of the maximum, as argmax), in two passes:
    the maximum of each of `chunks` equal parts of a row, then the first part holding the
    row's maximum (five small kernels with the index arithmetic). One argmax over a row is one
    thread block per row: 33-35 us for a 128,256-token vocabulary on an H200 at batch 1 and 64
    (benchmarks/results/h200_decode_profile_run5_l4.json); its two reductions took 10 and 21 us
    (run 6), the index arithmetic about 1 us a kernel. Within triton_argmax(True) (the static
    decode step beside the Triton attention) decode_kernels.argmax_triton does it in two."""
    if _triton_argmax and logits.stride(-1) == 1:
        return decode_kernels.argmax_triton(logits)
    r, n = logits.shape
    while chunks > 1 and n % chunks:
        chunks //= 2
    if chunks == 1:
        return logits.argmax(dim=-1)
    best, where = logits.view(r, chunks, n // chunks).max(dim=-1)  # first index in each part
    part = best.argmax(dim=-1, keepdim=True)  # the first part that holds the maximum
    return part[:, 0] * (n // chunks) + where.gather(-1, part)[:, 0]


def all_logits(h: Tensor, weight: Tensor, vocab: int, group: dist.ProcessGroup | None) -> Tensor:
    """Logits [r, vocab] over the whole vocabulary on every rank of the group (for sampling)."""
    logits = F.linear(h, weight)
    if group is None:
        return logits
    parts = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, logits, group=group)
    return torch.cat(parts, dim=-1)[:, :vocab]


def pick_tokens(
    h: Tensor,
    weight: Tensor,
    vs: VocabSlice,
    group: dist.ProcessGroup | None,
    vocab: int,
    choose: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Tokens [r] of final-norm rows h [r, hidden]: greedy over this rank's rows of the lm_head
    (agreed over the group), or `choose` over the whole vocabulary's logits [r, vocab]."""
    if choose is None:
        return greedy_tokens(h, weight, vs, group)
    return choose(all_logits(h, weight, vocab, group))
