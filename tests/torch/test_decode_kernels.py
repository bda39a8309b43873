"""decode_kernels: every kernel against a float64 reference written out directly (K/V repeated
per query head, an explicit masked softmax), over grouped and plain heads, one and several rows
of different lengths, with and without a right-padding gap, caches that are strided views whose
capacity is not a multiple of the Triton block. The Triton kernel runs in Triton's interpreter
on CPU tensors (TRITON_INTERPRET=1 set per test, read when the kernel is built), or on CUDA."""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import types

import pytest
import torch


def _import_triton_for_the_interpreter() -> None:
    """Triton jits its own standard library (tl.max, tl.cdiv, ...) when triton is imported,
    in interpreter mode only if TRITON_INTERPRET is set then: without CUDA, import it here
    with the variable set, and restore the environment at once (nothing else sees it)."""
    if torch.cuda.is_available() or "triton" in sys.modules:
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        with contextlib.suppress(ImportError):
            importlib.import_module("triton.language")
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


_import_triton_for_the_interpreter()

from planc.backends.torch.runtime import decode_kernels as dk

CAPACITY = 200  # not a multiple of dk.BLOCK_N (64); a gap below spans a whole tile


def _case(b: int, gap: bool) -> tuple[list[int], list[int], int]:
    """(lengths, gap_lo, gap_hi) for b rows (1 or 3). With a gap, the shared context is 140
    slots and row 0's prompt ends at 20, so its gap [20, 140) covers the tile [64, 128)."""
    if gap:
        lengths, lo, hi = [150, 180, 170], [20, 140, 60], 140
    else:
        lengths, lo, hi = [150, 37, 183], [150, 37, 183], 0
    if b == 1:
        return lengths[:1], lo[:1] if gap else [0], hi
    return lengths, lo if gap else [0, 0, 0], hi


def _inputs(b: int, kv: int, g: int, d: int, dtype: torch.dtype, gap: bool, device: str = "cpu"):
    """q [b, heads, d] and K/V caches that are views into a bigger cache (other rows, slots
    before and after), with lengths/gap tensors; int64 lengths, int32 gap_lo."""
    gen = torch.Generator().manual_seed(1000 * b + 100 * g + d + gap)
    lengths, lo, hi = _case(b, gap)
    big_k = torch.randn(b + 2, kv, CAPACITY + 24, d, generator=gen)
    big_v = torch.randn(b + 2, kv, CAPACITY + 24, d, generator=gen)
    k = big_k.to(device, dtype)[1:b + 1, :, 8:CAPACITY + 8]
    v = big_v.to(device, dtype)[1:b + 1, :, 8:CAPACITY + 8]
    q = torch.randn(b, kv * g, d, generator=gen).to(device, dtype)
    lengths_t = torch.tensor(lengths, dtype=torch.int64, device=device)
    lo_t = torch.tensor(lo, dtype=torch.int32, device=device)
    return q, k, v, lengths_t, lo_t, hi


def reference(q, k, v, lengths, gap_lo, gap_hi: int, scale: float) -> torch.Tensor:
    """float64 attention with K/V repeated per query head and an explicit masked softmax."""
    g = q.shape[1] // k.shape[1]
    k64 = k.double().repeat_interleave(g, dim=1)
    v64 = v.double().repeat_interleave(g, dim=1)
    scores = torch.einsum("bhd,bhnd->bhn", q.double(), k64) * scale
    j = torch.arange(k.shape[2], device=q.device)
    seen = (j < lengths[:, None]) & ~((j >= gap_lo[:, None]) & (j < gap_hi))
    scores = scores.masked_fill(~seen[:, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhn,bhnd->bhd", probs, v64)


def _close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.dtype == dtype and out.shape == ref.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def _rope_case(dtype: torch.dtype, device: str, heads: int = 4, kv: int = 2, d: int = 16):
    """A fused q/k/v output [3, heads + 2 kv, d] (a strided view), cos / sin [3, d // 2] and
    caches [3, kv, 10, d] that are views of a bigger cache, slot 6."""
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(3, 2, heads + 2 * kv, d, generator=gen).to(device, dtype)[:, 1]
    ang = torch.randn(3, d // 2, generator=gen)
    cos, sin = ang.cos().to(device, dtype), ang.sin().to(device, dtype)
    big = torch.randn(2, 5, kv, 12, d, generator=gen).to(device, dtype)
    slot = torch.tensor([6], device=device)
    return qkv, cos, sin, slot, big[0, 1:4, :, 1:11], big[1, 1:4, :, 1:11], heads


def _rope_reference(qkv, cos, sin, heads):
    """float64 rotate-half RoPE of every q and k head (HF: x cos + rotate_half(x) sin)."""
    x = qkv.double()
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos.double()[:, None], sin.double()[:, None]
    rot = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    kv = (qkv.shape[1] - heads) // 2
    return rot[:, :heads], rot[:, heads:heads + kv], x[:, heads + kv:]


def _check_rope_store(fn, dtype: torch.dtype, device: str) -> None:
    qkv, cos, sin, slot, k_cache, v_cache, heads = _rope_case(dtype, device)
    q_ref, k_ref, v_ref = _rope_reference(qkv, cos, sin, heads)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    q = fn(qkv.clone(), cos, sin, slot, k_cache, v_cache, heads)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(q.double().cpu(), q_ref.cpu(), rtol=tol, atol=tol)
    torch.testing.assert_close(k_cache[:, :, 6].double().cpu(), k_ref.cpu(), rtol=tol, atol=tol)
    assert torch.equal(v_cache[:, :, 6].cpu(), v_ref.to(dtype).cpu())
    keep = torch.ones(10, dtype=torch.bool)
    keep[6] = False  # every other slot, and the rest of the big cache, untouched
    assert torch.equal(k_cache[:, :, keep], k_before[:, :, keep])
    assert torch.equal(v_cache[:, :, keep], v_before[:, :, keep])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rope_store_torch_matches_reference(dtype):
    from planc.backends.torch.runtime import layers

    def fn(*args):  # type: ignore[no-untyped-def]
        return dk.rope_store_torch(*args, layers.EAGER.rope)

    _check_rope_store(fn, dtype, "cpu")


SHAPES = [(b, g, gap, d) for b in (1, 3) for g in (1, 4) for gap in (False, True)
          for d in (16, 64)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,g,gap,d", SHAPES)
def test_grouped_attention_matches_reference(b, g, gap, d, dtype):
    q, k, v, lengths, lo, hi = _inputs(b, 2, g, d, dtype, gap)
    n_read = math.ceil(int(lengths.max()) / 8) * 8
    assert n_read < CAPACITY
    out = dk.grouped_attention(q, k, v, lengths, lo, hi, d ** -0.5, n_read)
    _close(out, reference(q, k, v, lengths, lo, hi, d ** -0.5), dtype)


def _poison(k: torch.Tensor, v: torch.Tensor, lengths, lo, hi: int, upto: int) -> None:
    """NaN into every slot the rows must not see: invisible ones below `upto`, all at or
    above it (in place, into the views)."""
    j = torch.arange(k.shape[2], device=k.device)
    lengths, lo = lengths.to(k.device), lo.to(k.device)
    hidden = (j >= lengths[:, None]) | ((j >= lo[:, None]) & (j < hi)) | (j >= upto)
    k.masked_fill_(hidden[:, None, :, None], float("nan"))
    v.masked_fill_(hidden[:, None, :, None], float("nan"))


@pytest.mark.parametrize("gap", [False, True])
def test_grouped_attention_reads_nothing_it_must_not(gap):
    q, k, v, lengths, lo, hi = _inputs(3, 2, 4, 16, torch.float32, gap)
    n_read = int(lengths.max())
    clean = dk.grouped_attention(q, k, v, lengths, lo, hi, 0.25, n_read)
    k2, v2 = k.clone(), v.clone()
    _poison(k2, v2, lengths, lo, hi, n_read)
    k2[:, :, n_read:] = float("nan")
    out = dk.grouped_attention(q, k2, v2, lengths, lo, hi, 0.25, n_read)
    assert torch.isfinite(out).all()
    assert torch.equal(out, clean)


def test_visible_slots_is_the_length_minus_the_gap():
    seen = dk.visible_slots(torch.tensor([5, 3]), torch.tensor([1, 3]), 3, 6)
    assert seen.tolist() == [[True, False, False, True, True, False],
                             [True, True, True, False, False, False]]


def test_choose_and_the_registry():
    assert dk.choose("cpu", torch.float32) == "grouped_bmm"
    assert set(dk.KERNELS) == {"grouped_bmm", "triton_flash_decode"}
    assert dk.KERNELS[dk.choose("cpu", torch.bfloat16)] is dk.grouped_attention
    expected = "triton_flash_decode" if dk.available() else "grouped_bmm"
    assert dk.choose("cuda", torch.bfloat16) == expected


def test_flash_decode_without_triton_says_why(monkeypatch):
    monkeypatch.setattr(dk, "triton", None)
    assert not dk.available()
    q, k, v, lengths, lo, hi = _inputs(1, 1, 1, 16, torch.float32, False)
    with pytest.raises(RuntimeError, match="needs triton"):
        dk.flash_decode_triton(q, k, v, lengths, lo, hi, 0.25)


def test_default_splits_fill_the_device_within_the_tiles():
    cpu = torch.device("cpu")  # 4 "SMs" off CUDA
    assert dk.default_splits(2080, 8, cpu) == 1
    assert dk.default_splits(2080, 1, cpu) == 8
    assert dk.default_splits(100, 1, cpu) == 2  # no more splits than tiles


TRITON_SHAPES = [(1, 1, False, 16, None), (3, 4, True, 16, 3), (3, 1, True, 64, None),
                 (1, 4, True, 64, 2), (3, 4, False, 64, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,g,gap,d,splits", TRITON_SHAPES)
def test_flash_decode_triton_matches_reference(triton_device, b, g, gap, d, splits, dtype):
    q, k, v, lengths, lo, hi = _inputs(b, 2, g, d, dtype, gap, triton_device)
    out = dk.flash_decode_triton(q, k, v, lengths, lo, hi, d ** -0.5, splits)
    _close(out.cpu(), reference(q, k, v, lengths, lo, hi, d ** -0.5).cpu(), dtype)


@pytest.mark.parametrize("splits", [None, 4])
def test_flash_decode_triton_reads_nothing_it_must_not(triton_device, splits):
    q, k, v, lengths, lo, hi = _inputs(3, 2, 4, 16, torch.float32, True, triton_device)
    clean = dk.flash_decode_triton(q, k, v, lengths, lo, hi, 0.25, splits)
    k2, v2 = k.clone(), v.clone()
    _poison(k2, v2, lengths, lo, hi, CAPACITY)
    out = dk.flash_decode_triton(q, k2, v2, lengths, lo, hi, 0.25, splits)
    assert torch.isfinite(out).all()
    if triton_device == "cuda":  # the clone's strides are another autotuner key: maybe
        # another tile, another order of the float32 sums (a poisoned slot read is inf / nan)
        torch.testing.assert_close(out, clean, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(out, clean)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rope_store_triton_matches_reference(triton_device, dtype):
    _check_rope_store(dk.rope_store_triton, dtype, triton_device)


def _fused_case(g: int, d: int, gap: bool, dtype: torch.dtype, device: str):
    """The step's inputs for rope_flash_decode_triton: 3 rows that write their new token at
    slot 169 (lengths 170, the new one included), with or without right-padding gaps, a
    strided q/k/v output [3, 2 g + 4, d], tables of 300 positions and each row's position."""
    gen = torch.Generator().manual_seed(31 + 10 * g + d + gap)
    kv, heads, slot = 2, 2 * g, 169
    _, k, v, _, _, hi = _inputs(3, kv, g, d, dtype, gap, device)
    qkv = torch.randn(3, 2, heads + 2 * kv, d, generator=gen).to(device, dtype)[:, 1]
    ang = torch.randn(300, d // 2, generator=gen)
    cos, sin = ang.cos().to(device, dtype), ang.sin().to(device, dtype)
    pos = torch.tensor([169, 12, 250], device=device)
    lengths = torch.full((3,), slot + 1, dtype=torch.int32, device=device)
    lo = torch.tensor([20, 140, 60] if gap else [slot + 1] * 3, dtype=torch.int32, device=device)
    return (qkv, cos, sin, pos, torch.tensor([slot], device=device), k, v, lengths, lo,
            hi if gap else slot + 1, heads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("g,d,gap,splits", [(1, 16, False, None), (4, 16, True, 3),
                                            (4, 64, True, 1), (1, 64, True, 2)])
def test_rope_flash_decode_is_rope_store_then_attention(triton_device, g, d, gap, splits,
                                                        dtype):
    """The fused kernel against float64 RoPE (rounded to the dtype, as the cache holds it),
    the cache write, then float64 attention; the caches after it hold the new k and v at the
    slot and nothing else changed; a stale value at the slot is never read."""
    qkv, cos, sin, pos, slot, k, v, lengths, lo, hi, heads = _fused_case(
        g, d, gap, dtype, triton_device)
    q_ref, k_ref, v_ref = _rope_reference(qkv, cos[pos], sin[pos], heads)
    k_want, v_want = k.clone(), v.clone()
    k_want[:, :, 169] = k_ref.to(dtype)
    v_want[:, :, 169] = v_ref.to(dtype)
    want = reference(q_ref.to(dtype), k_want, v_want, lengths, lo, hi, d ** -0.5)
    k[:, :, 169] = float("nan")  # the stale slot the kernel overwrites and must not read
    v[:, :, 169] = float("nan")
    out = dk.rope_flash_decode_triton(qkv, cos, sin, pos, slot, k, v, lengths, lo, hi,
                                      d ** -0.5, heads, splits)
    _close(out.cpu(), want.cpu(), dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(k[:, :, 169].double().cpu(), k_ref.cpu(), rtol=tol, atol=tol)
    assert torch.equal(v[:, :, 169].cpu(), v_want[:, :, 169].cpu())
    keep = torch.ones(k.shape[2], dtype=torch.bool)
    keep[169] = False
    assert torch.equal(k[:, :, keep].cpu(), k_want[:, :, keep].cpu())
    assert torch.equal(v[:, :, keep].cpu(), v_want[:, :, keep].cpu())


@pytest.mark.parametrize("n", [97, 4096, 9000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_argmax_triton_is_torchs_first_index_of_the_maximum(triton_device, n, dtype):
    g = torch.Generator().manual_seed(n)
    logits = torch.randn(5, n, generator=g).to(dtype)  # bf16: ties happen
    logits[1, :] = 0.0  # all tied: index 0
    logits[2, n // 3] = logits[2, n - 1] = 9.0  # tie across the argmax's parts (n > its block)
    logits[3, 1] = logits[3, 2] = 9.0  # tie inside a part
    logits[4, :] = float("-inf")  # nothing finite: index 0, as torch
    logits = torch.cat([logits, torch.full((5, 3), 99.0, dtype=dtype)], dim=1)[:, :n]  # rows
    logits = logits.to(triton_device)  # strided n + 3 apart, the 99s past each row's end
    got = dk.argmax_triton(logits)
    assert got.dtype == torch.long
    assert torch.equal(got.cpu(), logits.cpu().argmax(dim=-1))
    assert got.tolist()[1:5] == [0, n // 3, 1, 0]


@pytest.mark.parametrize("r", [3, 1500])  # 1500: more rows than one pass of the kernel
def test_finish_step_triton_writes_the_tokens_and_advances_the_counters(triton_device, r):
    generate = 5
    dev = triton_device
    tok = torch.arange(7, 7 + r, device=dev)
    tok_out = torch.zeros(r, 1, dtype=torch.long, device=dev)
    tokens = torch.full((2 * r, generate), -1, dtype=torch.long, device=dev)
    pos = torch.arange(10, 10 + r, device=dev)
    lengths = torch.arange(4, 4 + r, dtype=torch.int32, device=dev)
    slot, col = torch.tensor([20], device=dev), torch.tensor([2], device=dev)
    dk.finish_step_triton(tok, tok_out, tokens[r:], pos, slot, lengths, col)
    assert torch.equal(tok_out[:, 0], tok)
    assert torch.equal(tokens[r:, 2], tok)  # the microbatch's rows, column col
    assert (tokens[:r] == -1).all() and (tokens[r:, [0, 1, 3, 4]] == -1).all()
    assert torch.equal(pos.cpu(), torch.arange(11, 11 + r))
    assert torch.equal(lengths.cpu(), torch.arange(5, 5 + r, dtype=torch.int32))
    assert slot.tolist() == [21] and col.tolist() == [3]


def test_tuned_tiles_names_each_pick_of_the_autotuner(monkeypatch) -> None:
    """The run's metrics name the attention tiles the autotuner picked (one per tuned shape,
    deduplicated); nothing before the GPU kernel was tuned (the interpreter has no autotuner)."""
    triton = pytest.importorskip("triton")

    tuned = types.SimpleNamespace(cache={  # what triton.autotune keeps: picks by shape key
        ("a",): triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=2),
        ("b",): triton.Config({"BLOCK_N": 128}, num_warps=8, num_stages=3),
        ("c",): triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=2)})
    monkeypatch.setattr(dk, "_BUILT", {})
    assert dk.tuned_tiles() == []
    monkeypatch.setattr(dk, "_BUILT", {False: (tuned, None)})
    assert dk.tuned_tiles() == ["BLOCK_N 128, 8 warps, 3 stages", "BLOCK_N 64, 4 warps, 2 stages"]


@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rope_flash_decode_sums_float32_partials_of_qkv(triton_device, parts, dtype):
    """q/k/v as a product's float32 partials [parts, 3, heads + 2 kv, d] (decode_products.
    split_kernel, the step's q/k/v at one row): the same caches bit for bit, and the same
    output, as the kernel given their sum rounded to the dtype. The partials are small
    integers / 8, so every float32 sum is exact and both roundings (torch's, Triton's
    interpreter's) agree; a kernel that read only the first partial, or summed a part twice,
    would differ."""
    qkv, cos, sin, pos, slot, k, v, lengths, lo, hi, heads = _fused_case(
        4, 16, True, dtype, triton_device)
    gen = torch.Generator().manual_seed(parts)
    p = (torch.randint(-40, 41, (parts, *qkv.shape), generator=gen) / 8).to(triton_device)
    summed = p.sum(0).to(dtype)
    k1, v1, k2, v2 = k.clone(), v.clone(), k.clone(), v.clone()
    want = dk.rope_flash_decode_triton(summed, cos, sin, pos, slot, k1, v1, lengths, lo, hi,
                                       16 ** -0.5, heads, 2)
    out = dk.rope_flash_decode_triton(p, cos, sin, pos, slot, k2, v2, lengths, lo, hi,
                                      16 ** -0.5, heads, 2)
    assert out.dtype == dtype
    assert torch.equal(k2, k1) and torch.equal(v2, v1)
    if triton_device == "cuda":  # float32 partials are another autotuner key: maybe another
        # tile, another order of the softmax's float32 sums (one unit of bf16 at most)
        tol = 1e-5 if dtype == torch.float32 else 2 ** -7
        torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    else:
        assert torch.equal(out, want)
