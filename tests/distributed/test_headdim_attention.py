"""Head x head_dim split attention (seed 001) against full single-process attention.

The reference applies Hugging Face Llama's own RoPE (LlamaRotaryEmbedding +
apply_rotary_pos_emb) to the full q/k, then plain float64 attention and o_proj. Each rank (i, j)
of the n x m grid takes head group i and head_dim slice j of the raw q/k/v, applies RoPE to its
slice, and must reproduce its slice of the attention output and, after the row-parallel o_proj
sum, the full o_proj output.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.distributed as dist
from gloo_spawn import spawn  # tests/distributed is on sys.path (no __init__.py)

from planc.backends.torch.runtime.headdim_attention import (
    apply_rope_slice,
    headdim_attention,
    o_proj_row_parallel,
    rope_slice,
)
from planc.layout.headdim import (
    head_group,
    headdim_shard_indices,
    headdim_slice_indices,
    headdim_split_error,
    headdim_split_ok,
)

TOL = 1e-4


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def hf_rope(heads: int, kv_heads: int, head_dim: int, batch: int, seq: int):
    """cos/sin [batch, seq, head_dim] from transformers' LlamaRotaryEmbedding."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=heads * head_dim,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=64,
        rope_theta=10000.0,
    )
    positions = torch.arange(seq).expand(batch, seq)
    return LlamaRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float32), positions)


def reference(q, k, v, w_o, cos, sin, causal: bool):
    """HF RoPE on the full heads, float64 attention, o_proj."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        s = q.shape[2]
        scores = scores + torch.full((s, s), float("-inf"), dtype=scores.dtype).triu(1)
    attn = scores.softmax(-1) @ v
    b, h, s, d = attn.shape
    return attn, attn.transpose(1, 2).reshape(b, s, h * d) @ w_o.double().t()





# ---- workers ---------------------------------------------------------------------------------


def _grid_groups(n: int, m: int):
    """dim group (same head group i) and head group (same slice j) of this rank; every rank
    creates every group, in the same order, as new_group requires."""
    rank = dist.get_rank()
    dim_groups = [dist.new_group([i * m + j for j in range(m)]) for i in range(n)]
    head_groups = [dist.new_group([i * m + j for i in range(n)]) for j in range(m)]
    return dim_groups[rank // m], head_groups[rank % m]


def make_cases(n: int, m: int, heads: int, kv_heads: int, head_dim: int) -> list[dict]:
    """Global inputs and HF references, built once in the parent (children skip transformers)."""
    batch, seq, hidden = 2, 6, 12
    cos, sin = hf_rope(heads, kv_heads, head_dim, batch, seq)
    cases = []
    for causal in (True, False):
        gen = torch.Generator().manual_seed(100 * n + m + int(causal))
        q = torch.randn(batch, heads, seq, head_dim, generator=gen)
        k = torch.randn(batch, kv_heads, seq, head_dim, generator=gen)
        v = torch.randn(batch, kv_heads, seq, head_dim, generator=gen)
        w_o = torch.randn(hidden, heads * head_dim, generator=gen)
        ref_attn, ref_o = reference(q, k, v, w_o, cos, sin, causal)
        inputs = {"q": q, "k": k, "v": v, "w_o": w_o, "cos": cos, "sin": sin}
        refs = {"ref_attn": ref_attn, "ref_o": ref_o}
        cases.append({"n": n, "m": m, "causal": causal, **inputs, **refs})
    return cases


def _check_grid(c: dict) -> None:
    n, m, causal = c["n"], c["m"], c["causal"]
    heads, head_dim, kv_heads = c["q"].shape[1], c["q"].shape[3], c["k"].shape[1]
    i, j = divmod(dist.get_rank(), m)
    dim_group, head_group_pg = _grid_groups(n, m)

    dims = headdim_slice_indices(head_dim, m, j)
    hq, hkv = head_group(heads, n, i), head_group(kv_heads, n, i)
    cos_l, sin_l = rope_slice(c["cos"], c["sin"], head_dim, m, j)
    q_l = apply_rope_slice(c["q"][:, hq][..., dims], cos_l, sin_l)
    k_l = apply_rope_slice(c["k"][:, hkv][..., dims], cos_l, sin_l)
    attn = headdim_attention(q_l, k_l, c["v"][:, hkv][..., dims], dim_group, causal=causal)
    where = f"(n, m)=({n}, {m}) rank ({i}, {j}) causal={causal}"
    err = rel_err(attn, c["ref_attn"][:, hq][..., dims])
    assert err <= TOL, f"attention slice {where}: relative error {err:.2e}"

    w_local = c["w_o"][:, headdim_shard_indices(heads, head_dim, n, i, m, j)]
    for groups in ((dist.group.WORLD,), (dim_group, head_group_pg)):
        out = o_proj_row_parallel(attn, w_local, groups)
        err = rel_err(out, c["ref_o"])
        assert err <= TOL, f"o_proj over {len(groups)} group(s) {where}: error {err:.2e}"


def _grid_worker(rank: int, world: int, cases: list[dict]) -> None:
    for case in cases:
        _check_grid(case)


@pytest.mark.distributed
def test_head_by_headdim_split_with_rope_matches_hf_on_grids_2x2_and_1x4() -> None:
    cases = make_cases(2, 2, heads=4, kv_heads=2, head_dim=8)
    cases += make_cases(1, 4, heads=2, kv_heads=1, head_dim=8)
    spawn(partial(_grid_worker, cases=cases), 4)


@pytest.mark.distributed
def test_head_by_headdim_split_with_rope_matches_hf_on_grid_4x2() -> None:
    spawn(partial(_grid_worker, cases=make_cases(4, 2, heads=8, kv_heads=4, head_dim=8)), 8)


# ---- single-process pieces -------------------------------------------------------------------


@pytest.mark.parametrize(("head_dim", "m"), [(8, 1), (8, 2), (8, 4), (128, 8), (128, 64)])
def test_slices_keep_every_rotate_half_pair_together_and_cover_each_dim_once(
    head_dim: int, m: int
) -> None:
    slices = [headdim_slice_indices(head_dim, m, j) for j in range(m)]
    assert sorted(d for s in slices for d in s) == list(range(head_dim))
    half = head_dim // 2
    for s in slices:
        assert len(s) == head_dim // m
        for d in s[: len(s) // 2]:
            assert d < half and d + half in s  # rotate_half pairs i with i + head_dim/2
        assert s[len(s) // 2 :] == [d + half for d in s[: len(s) // 2]]


def test_shard_indices_of_all_ranks_cover_heads_times_head_dim_once() -> None:
    heads, head_dim, n, m = 4, 8, 2, 2
    flat = [
        x
        for i in range(n)
        for j in range(m)
        for x in headdim_shard_indices(heads, head_dim, n, i, m, j)
    ]
    assert sorted(flat) == list(range(heads * head_dim))


@pytest.mark.parametrize(("head_dim", "m"), [(8, 3), (12, 4), (6, 2), (8, 0)])
def test_split_that_would_separate_rope_pairs_is_rejected_with_the_fix(head_dim, m) -> None:
    assert not headdim_split_ok(head_dim, m)
    assert f"divisible by 2*{m}" in headdim_split_error(head_dim, m)
    with pytest.raises(ValueError, match="RoPE pair"):
        headdim_slice_indices(head_dim, m, 0)


def test_rope_on_a_slice_equals_the_slice_of_hf_rope() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = hf_rope(4, 4, 16, 1, 5)
    gen = torch.Generator().manual_seed(7)
    q, k = torch.randn(1, 4, 5, 16, generator=gen), torch.randn(1, 4, 5, 16, generator=gen)
    q_ref, _ = apply_rotary_pos_emb(q, k, cos, sin)
    for j in range(4):
        dims = headdim_slice_indices(16, 4, j)
        local = apply_rope_slice(q[..., dims], *rope_slice(cos, sin, 16, 4, j))
        assert rel_err(local, q_ref[..., dims]) <= TOL


def test_rope_slice_of_half_width_tables_matches_the_full_width_slice() -> None:
    cos, sin = hf_rope(4, 4, 16, 1, 5)  # HF full width: cat(cos_half, cos_half)
    assert torch.equal(cos[..., :8], cos[..., 8:])
    for j in range(4):
        full_cos, full_sin = rope_slice(cos, sin, 16, 4, j)
        half_cos, half_sin = rope_slice(cos[..., :8], sin[..., :8], 16, 4, j)
        assert torch.equal(half_cos, full_cos[..., :2]) and torch.equal(half_cos, full_cos[..., 2:])
        assert torch.equal(half_sin, full_sin[..., :2])
