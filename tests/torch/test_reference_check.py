"""The verdict of a run against its reference: tolerance per dtype, and where outputs first differ
(prefill: the first sequence and position past the tolerance, then the first layer; decode: the
earliest differing generated token). Plain tensors, no processes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from planc.backends.torch.reference_check import (
    RTOL,
    decode_verdict,
    exit_on_mismatch,
    first_layer_,
    prefill_verdict,
)


def test_prefill_within_the_dtype_tolerance_is_ok_and_names_no_place():
    ref = torch.ones(2, 4, 8)
    out = ref + RTOL["float32"] / 2
    v = prefill_verdict(out, ref, "float32")
    assert v["ok"] is True and v["first_difference"] is None
    exit_on_mismatch({"reference": v})  # returns: nothing to fail


def test_prefill_past_the_tolerance_names_the_first_sequence_and_position_row_major():
    ref = torch.ones(3, 5, 8)
    out = ref.clone()
    out[2, 1, 3] += 0.5  # later sequence, earlier position
    out[1, 4, 0] += 0.5  # first in row-major order
    v = prefill_verdict(out, ref, "float32")
    assert v["ok"] is False
    assert v["first_difference"] == {"sequence": 1, "position": 4}
    assert "first at sequence 1, position 4" in v["message"]
    # bfloat16 accepts what float32 does not
    assert prefill_verdict(ref + 0.01, ref, "bfloat16")["ok"] is True
    assert prefill_verdict(ref + 0.01, ref, "float32")["ok"] is False
    with pytest.raises(SystemExit, match=r"R004.*first at sequence 1, position 4"):
        exit_on_mismatch({"reference": v})


def test_first_layer_is_the_earliest_layer_output_past_the_tolerance():
    ref = torch.ones(1, 2, 4)
    states = (ref, ref, ref * 2, ref)  # embeddings, layer 0, layer 1, final norm of layer 2
    outs = [ref, ref, ref]  # layer 1 differs (2 against 1)
    v = prefill_verdict(ref + 1, ref, "float32")
    first_layer_(v, outs, states, "float32")
    assert v["first_layer"] == 1
    assert "first differs after layer 1" in v["message"]
    v = prefill_verdict(ref + 1, ref, "float32")
    first_layer_(v, [ref, ref * 2, ref], states, "float32")  # all agree but the last layer
    assert v["first_layer"] == 2 and "the last layer (2) or the final norm" in v["message"]


def test_decode_names_the_earliest_generated_token_that_differs():
    ref = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    tokens = ref.clone()
    tokens[0, 3] = 0
    tokens[1, 1] = 0  # earlier step, later sequence: this one comes first
    v = decode_verdict(tokens, ref, context=16)
    assert v["ok"] is False
    assert v["first_difference"] == {"sequence": 1, "generated_index": 1, "position": 17}
    assert "generated token 1 (position 17): 0 against 6; 2 of 8 tokens differ" in v["message"]
    assert decode_verdict(ref, ref, context=16)["ok"] is True
