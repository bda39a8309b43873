"""Ring and all-gather sequence-parallel attention against single-process float64 attention.

The distributed tests spawn one gloo process group per world size and run every case inside it:
each rank builds the same global q/k/v from a seed, keeps its sequence shard, runs the kernel,
and the outputs are all-gathered, unsharded and compared to plain softmax(QK^T/sqrt(d)+mask)V.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from gloo_spawn import spawn  # tests/distributed is on sys.path (no __init__.py)

from planc.backends.torch.runtime.ring_attention import (
    attention_with_lse,
    explicit_attention_with_lse,
    gather_attention,
    merge_attention,
    positions_for_rank,
    ring_attention,
    shard_seq,
    unshard_seq,
    zigzag_shard,
    zigzag_unshard,
)

TOL = 1e-4


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def reference_attention(q, k, v, causal: bool) -> torch.Tensor:
    """Plain float64 attention over the full sequence; GQA by repeating kv heads."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        s = q.shape[2]
        scores = scores + torch.full((s, s), float("-inf"), dtype=scores.dtype).triu(1)
    return scores.softmax(-1) @ v





# ---- workers ---------------------------------------------------------------------------------

# (heads, kv_heads, causal, zigzag, kernel)
FULL_CASES = [
    (4, 4, True, True, "auto"),
    (4, 2, True, True, "explicit"),
    (4, 2, True, False, "auto"),
    (4, 4, True, False, "explicit"),
    (4, 2, False, True, "auto"),
    (4, 4, False, False, "explicit"),
]
SMALL_CASES = [(4, 2, True, True, "auto"), (2, 2, True, False, "auto")]


def _check_cases(rank: int, world: int, cases) -> None:
    batch, head_dim, seq = 2, 8, 2 * world * 3
    for heads, kv_heads, causal, zigzag, kernel in cases:
        gen = torch.Generator().manual_seed(1000 * heads + 10 * kv_heads + world)
        q = torch.randn(batch, heads, seq, head_dim, generator=gen)
        k = torch.randn(batch, kv_heads, seq, head_dim, generator=gen)
        v = torch.randn(batch, kv_heads, seq, head_dim, generator=gen)
        ref = reference_attention(q, k, v, causal)
        ql, kl, vl = (shard_seq(t, rank, world, 2, zigzag) for t in (q, k, v))
        outs = {
            "ring": ring_attention(ql, kl, vl, causal=causal, zigzag=zigzag, backend=kernel),
            "gather": gather_attention(ql, kl, vl, causal=causal, zigzag=zigzag),
        }
        for name, local in outs.items():
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local.contiguous())
            err = rel_err(unshard_seq(parts, 2, zigzag), ref)
            case = f"{name} world={world} heads={heads}/{kv_heads} causal={causal} zigzag={zigzag}"
            assert err <= TOL, f"{case} kernel={kernel}: relative error {err:.2e}"


def _full_worker(rank: int, world: int) -> None:
    _check_cases(rank, world, FULL_CASES)


def _small_worker(rank: int, world: int) -> None:
    _check_cases(rank, world, SMALL_CASES)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 4])
def test_ring_and_gather_attention_match_full_attention_in_every_mode(world: int) -> None:
    spawn(_full_worker, world)


@pytest.mark.distributed
def test_ring_and_gather_attention_match_full_attention_on_eight_ranks() -> None:
    spawn(_small_worker, 8)


# ---- single-process pieces -------------------------------------------------------------------


def test_zigzag_shard_holds_chunks_r_and_mirror_and_unshard_inverts_it() -> None:
    x = torch.arange(16).reshape(1, 16)
    world = 4
    parts = [zigzag_shard(x, r, world, 1) for r in range(world)]
    assert parts[1].tolist() == [[2, 3, 12, 13]]
    assert torch.equal(zigzag_unshard(parts, 1), x)
    for zigzag in (True, False):
        parts = [shard_seq(x, r, world, 1, zigzag) for r in range(world)]
        assert torch.equal(unshard_seq(parts, 1, zigzag), x)
        for r in range(world):
            assert torch.equal(positions_for_rank(16, r, world, zigzag), parts[r][0])


def test_positions_reject_a_sequence_not_divisible_by_two_chunks_per_rank() -> None:
    with pytest.raises(ValueError, match="not divisible by 8"):
        positions_for_rank(12, 0, 4, zigzag=True)


@pytest.mark.parametrize("kernel", ["auto", "explicit"])
@pytest.mark.parametrize("causal", [True, False])
def test_block_kernel_returns_attention_and_logsumexp(kernel: str, causal: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=gen) for _ in range(3))
    out, lse = attention_with_lse(
        q, k[:, :2], v[:, :2], causal=causal, scale=8**-0.5, backend=kernel
    )
    assert rel_err(out, reference_attention(q, k[:, :2], v[:, :2], causal)) <= TOL
    scores = q.double() @ k[:, :2].double().repeat_interleave(2, 1).transpose(-1, -2) / 8**0.5
    if causal:
        scores = scores + torch.full((6, 6), float("-inf"), dtype=scores.dtype).triu(1)
    assert rel_err(lse, scores.logsumexp(-1)) <= TOL


def test_merging_two_key_halves_equals_attention_over_all_keys() -> None:
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=gen) for _ in range(3))
    a = explicit_attention_with_lse(q, k[:, :, :3], v[:, :, :3], False, 8**-0.5)
    b = explicit_attention_with_lse(q, k[:, :, 3:], v[:, :, 3:], False, 8**-0.5)
    out, _ = merge_attention(*a, *b)
    assert rel_err(out, reference_attention(q, k, v, causal=False)) <= TOL
