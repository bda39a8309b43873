"""Weight compression (planc.backends.torch.runtime.compress) against plain torch math, and its
byte accounting (planc/layout/compress.py) against the tensors actually stored and torch's own 2:4
formats. CUDA-only paths run where a GPU is present and are skipped elsewhere."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F

from planc.backends.torch.runtime import compress
from planc.layout import compress as formats

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODES = {
    "dense": (False, False),
    "int8": (True, False),
    "2:4": (False, True),
    "int8+2:4": (True, True),
}


def _weight(out_f: int, in_f: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    w[1] = 0.0  # an all-zero row: scale 0
    w[2, 5] = 40.0  # an outlier dominating its row's scale
    return w.to(dtype)


def _keeps_two_largest(w: torch.Tensor, mask: torch.Tensor) -> bool:
    """mask keeps exactly 2 of every 4 and they are a largest pair by |w| (ties allowed: 16-bit
    weights have many equal magnitudes): their |w| sum equals the two largest found by sort."""
    groups = w.double().abs().view(w.shape[0], -1, 4)
    m = mask.view_as(groups)
    top2 = groups.sort(dim=-1, descending=True).values[..., :2].sum(-1)
    return bool((m.sum(-1) == 2).all() and torch.equal((groups * m).sum(-1), top2))


def _ref_int8(w: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric int8 round trip in float64."""
    w64 = w.double()
    scale = w64.abs().amax(1, keepdim=True) / 127
    return torch.where(scale > 0, torch.round(w64 / scale).clamp(-127, 127) * scale, 0.0)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_int8_rounds_within_half_a_scale_per_row(dtype: torch.dtype) -> None:
    w = _weight(48, 64, dtype)
    q, scale = compress.quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scale.dtype == dtype and scale.shape == (48,)
    exact = w.double().abs().amax(1) / 127
    s = scale.double()
    assert (s >= exact * (1 - 2.0**-23)).all()  # not rounded down past float32 rounding
    assert (s <= exact * (1 + 2.0**-7)).all()  # and at most one ulp of a 16-bit dtype above
    assert q.abs().max() <= 127 and (q[1] == 0).all() and scale[1] == 0
    err = (w.double() - q.double() * s[:, None]).abs()
    assert (err <= s[:, None] / 2 * (1 + 1e-6) + 1e-30).all()
    dq = compress.dequantize_int8(q, scale)
    assert dq.dtype == dtype and (dq[1] == 0).all()


def test_int8_linear_equals_x_times_dequantized_weight() -> None:
    w = _weight(40, 64, torch.float32)
    q, scale = compress.quantize_int8(w)
    x = torch.randn(3, 7, 64)
    ref = x.double() @ (q.double() * scale.double()[:, None]).T
    assert _rel(compress.int8_linear(x, q, scale), ref) <= 1e-5
    assert _rel(ref, x.double() @ _ref_int8(w).T) <= 1e-6  # and that is the int8 round trip


@pytest.mark.parametrize("dtype", DTYPES)
def test_2_4_mask_keeps_exactly_the_two_largest_of_every_four(dtype: torch.dtype) -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    mask = compress.mask_2_4(w)
    assert _keeps_two_largest(w, mask)
    assert not _keeps_two_largest(w, mask.roll(1, dims=1))  # the check can fail
    pruned = compress.prune_2_4(w)
    assert torch.equal(pruned, torch.where(mask, w, torch.zeros_like(w)))
    with pytest.raises(ValueError):
        compress.mask_2_4(torch.randn(4, 6))


def test_pack_2_4_round_trips_and_uses_two_bits_per_kept_element() -> None:
    w = torch.randn(24, 96)
    mask = compress.mask_2_4(w)
    values, meta = compress.pack_2_4(w, mask)
    assert values.shape == (24, 48) and meta.shape == (24, 12) and meta.dtype == torch.uint8
    assert torch.equal(compress.unpack_2_4(values, meta), w * mask)
    with pytest.raises(ValueError):
        compress.pack_2_4(w, torch.ones_like(mask))


@pytest.mark.parametrize("mode,dtype", list(itertools.product(MODES, DTYPES)))
def test_compressed_linear_equals_its_dense_equivalent(mode: str, dtype: torch.dtype) -> None:
    int8, sparse = MODES[mode]
    w = _weight(64, 128, dtype)
    lin = compress.CompressedLinear(w, int8=int8, sparse_2_4=sparse)
    mask = compress.mask_2_4(w)  # checked by the test above
    eff = w.double() * mask if sparse else w.double()
    if int8:
        eff = _ref_int8(eff)
    # The stored weight is the compressed one (not the original) ...
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert _rel(lin.dense_weight(), eff) <= tol
    # ... and the forward pass is x @ that weight.T.
    x = torch.randn(2, 5, 128).to(dtype)
    ref = x.double() @ lin.dense_weight().double().T
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert _rel(lin(x), ref) <= tol
    assert lin(x).dtype == dtype and lin(x).shape == (2, 5, 64)


@pytest.mark.parametrize("mode,dtype", list(itertools.product(MODES, DTYPES)))
def test_weight_bytes_equal_the_stored_tensors(mode: str, dtype: torch.dtype) -> None:
    int8, sparse = MODES[mode]
    lin = compress.CompressedLinear(_weight(64, 128, dtype), int8=int8, sparse_2_4=sparse)
    real = sum(t.numel() * t.element_size() for t in lin.stored_tensors().values())
    size = torch.empty(0, dtype=dtype).element_size()
    assert real == lin.stored_bytes() == formats.weight_bytes(64, 128, size, mode)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int8])
def test_sparse_bytes_equal_torchs_cutlass_and_cusparselt_formats(dtype: torch.dtype) -> None:
    conv = pytest.importorskip("torch.sparse._semi_structured_conversions")
    out_f, in_f = 64, 128
    w = compress.prune_2_4(torch.randn(out_f, in_f) * 20)
    packed, meta = conv.sparse_semi_structured_from_dense_cutlass(w.to(dtype).contiguous())
    cutlass = packed.numel() * packed.element_size() + meta.numel() * meta.element_size()
    size = torch.empty(0, dtype=dtype).element_size()
    if dtype == torch.int8:  # int8 values of an int8+2:4 weight, without its fp16 scales
        ours = formats.weight_bytes(out_f, in_f, 2, "int8+2:4") - out_f * 2
        cusparselt = out_f * in_f * 10 // 16  # torch._cslt_compress: numel * 10/16 int8
    else:
        ours = formats.weight_bytes(out_f, in_f, size, "2:4")
        cusparselt = out_f * in_f * 9 // 16 * size  # numel * 9/16 elements of 16 bits
    assert cutlass == ours == cusparselt
    assert formats.sparse_meta_bytes(out_f, in_f) == meta.numel() * meta.element_size()


def test_format_for_maps_the_compress_lines() -> None:
    f = formats.format_for
    assert f(True, True, True) == "int8+2:4" and f(False, True, True) == "int8"
    assert f(True, False, True) == "2:4" and f(False, False, True) == "dense"
    assert f(True, True, False) == "int8" and f(True, False, False) == "dense"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA paths need a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_paths_equal_their_dense_equivalent(dtype: torch.dtype) -> None:
    w = _weight(256, 512, dtype).cuda()
    x = torch.randn(3, 37, 512, device="cuda").to(dtype)
    for mode, (int8, sparse) in MODES.items():
        lin = compress.CompressedLinear(w, int8=int8, sparse_2_4=sparse)
        assert (lin.semi is not None) == (mode == "2:4")  # 2:4 alone takes the sparse kernel
        ref = x.double() @ lin.dense_weight().double().T
        assert _rel(lin(x), ref) <= 2e-2, mode
        size = w.element_size()
        assert lin.stored_bytes() == formats.weight_bytes(256, 512, size, mode), mode
        if sparse:
            assert _keeps_two_largest(w.cpu(), compress.mask_2_4(w).cpu())
    q, scale = compress.quantize_int8(w)
    ref = x.double() @ compress.dequantize_int8(q, scale).double().T
    assert _rel(compress.int8_linear(x, q, scale), ref) <= 2e-2
    assert _rel(F.linear(x, w), x.double() @ w.double().T) <= 2e-2
