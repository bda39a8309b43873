"""The head x head_dim split (seed 001): which heads and which dims of each head a rank holds.

The m x n partitioning of attention puts `heads over n` and `head_dim over m`: rank (i, j) holds
head group i (contiguous heads) and head_dim slice j of every one of those heads. This module
says which indices those are, so the verifier can check a plan and the weight loader can pick
rows of q/k/v_proj and columns of o_proj without importing torch.

Why the head_dim slice is not contiguous: Llama's RoPE (Hugging Face `rotate_half`) rotates
dimension i together with dimension i + head_dim/2. For the rotation to be computed locally each
pair must live on one rank, so slice j of m is the range [j*d/(2m), (j+1)*d/(2m)) of the first
half followed by the same range shifted by d/2. Laid out in that order, the local slice is itself
a valid `rotate_half` input: rotate_half(x)[slice] == rotate_half(x[slice]), and the matching
cos/sin columns are cos[..., slice]. This needs head_dim divisible by 2*m; the pairing itself
is planc/layout/slices.py's.
"""

from __future__ import annotations

from planc.layout.slices import indices, pieces_per_part


def headdim_split_ok(head_dim: int, m: int) -> bool:
    """True when head_dim can be split over m ranks keeping every RoPE pair on one rank."""
    return m >= 1 and head_dim >= 2 and head_dim % (pieces_per_part("rope_paired") * m) == 0


def headdim_split_error(head_dim: int, m: int) -> str | None:
    """None when the split is fine, else a message that says what is wrong and how to fix it."""
    if headdim_split_ok(head_dim, m):
        return None
    good = [k for k in range(1, head_dim // 2 + 1) if headdim_split_ok(head_dim, k)]
    return (
        f"head_dim ({head_dim}) split over {m} ranks: head_dim must be divisible by 2*{m} "
        f"= {2 * m} so that every RoPE pair (i, i + head_dim/2) stays on one rank; "
        f"try head_dim split in {{{', '.join(map(str, good))}}}"
    )


def headdim_slice_indices(head_dim: int, m: int, j: int) -> list[int]:
    """Dimensions of one head held by slice j of m: a range of the first half, then its partner
    range in the second half. len == head_dim // m."""
    if not headdim_split_ok(head_dim, m):
        raise ValueError(headdim_split_error(head_dim, m))
    if not 0 <= j < m:
        raise ValueError(f"slice index {j} out of range for {m} slices")
    return indices("rope_paired", head_dim, m, j)


def head_group(num_heads: int, n: int, i: int) -> list[int]:
    """Heads of head group i of n: contiguous, so with GQA (kv_heads divisible by n) query head h
    and its kv head h // (num_heads // kv_heads) land in the same group."""
    if num_heads % n != 0:
        raise ValueError(f"heads ({num_heads}) is not divisible by the head split ({n})")
    size = num_heads // n
    return list(range(i * size, (i + 1) * size))


def headdim_shard_indices(
    num_heads: int, head_dim: int, n: int, i: int, m: int, j: int
) -> list[int]:
    """Flat indices into the heads*head_dim axis held by rank (i, j): head-major, then the
    slice's dimensions. These are the rows of q_proj (k/v_proj with kv_heads) and the columns of
    o_proj for that rank, in the order the local tensors use them."""
    return headdim_rows(head_group(num_heads, n, i), head_dim, m, j)


def headdim_rows(heads: range | list[int], head_dim: int, m: int, j: int) -> list[int]:
    """Rows of q_proj (k/v_proj with kv heads) for `heads` and head_dim slice j of m."""
    dims = headdim_slice_indices(head_dim, m, j)
    return [h * head_dim + d for h in heads for d in dims]
