"""Whether a run's output equals the reference, and where it first differs.

Prefill: the gathered last_hidden_state against the checkpoint's own class's, by relative error
(max |out - ref| / max |ref|) under a tolerance per run dtype (RTOL; docs/strategies.md,
"Checked against Hugging Face"): the reference is float32, so a 16-bit run carries its own
rounding. The first difference is the first (sequence, position), in row-major order, whose
largest error exceeds the tolerance times max |ref|, and then the first layer whose output
differs (runtime/diagnose.py gathers every layer's output; Hugging Face's
output_hidden_states). Decode: the greedy tokens must be equal; the first difference is the
first generated position (earliest step, then lowest sequence) where they are not.

A verdict is plain data in the metrics JSON (`reference`: ok, tolerance, first difference,
message); `exit_on_mismatch` ends rank 0's process with exit status 1 and the message on stderr
after the metrics are written, so the program and `planc run` fail (launch.OutputDiffers).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

# Largest relative error (max |out - ref| / max |ref|) accepted against the float32 reference.
# float32: runs agree to ~1e-6; int8 / 2:4 plans are compared with their compressed reference
# and stay under 1e-3. 16-bit runs round every activation (bf16 has 8 mantissa bits).
RTOL = {"float32": 2e-3, "float16": 2e-2, "bfloat16": 5e-2}


def prefill_verdict(out: Tensor, ref: Tensor, dtype: str) -> dict[str, Any]:
    """out, ref [batch, seq, hidden] -> the metrics JSON's `reference` entry."""
    err = (out.float() - ref.float()).abs()
    scale = max(ref.float().abs().max().item(), 1e-30)
    tol = RTOL[dtype]
    rel = err.max().item() / scale
    verdict: dict[str, Any] = {"ok": rel <= tol, "tolerance": tol, "max_rel_error": rel,
                               "first_difference": None}
    if not verdict["ok"]:
        bad = (err.amax(dim=-1) > tol * scale).nonzero()  # [n, 2] rows in row-major order
        row, pos = (int(v) for v in bad[0].tolist())
        here = err[row, pos].max().item() / scale
        verdict["first_difference"] = {"sequence": row, "position": pos}
        verdict["message"] = (
            f"the output differs from the Hugging Face reference: max rel error {rel:.3g} > "
            f"{tol:g} (the {dtype} tolerance); first at sequence {row}, position {pos} "
            f"(rel error {here:.3g} there)"
        )
    return verdict


def first_layer_(
    verdict: dict[str, Any], outs: list[Tensor | None], states: tuple[Tensor, ...], dtype: str
) -> None:
    """Add to a failed prefill verdict the first layer whose output differs: outs[i] is the
    run's output of layer i, states Hugging Face's output_hidden_states (states[i + 1] is layer
    i's output for every layer but the last, whose output only reaches the final norm)."""
    tol, layers = RTOL[dtype], len(outs)
    for i, out in enumerate(outs[:-1]):
        assert out is not None
        ref = states[i + 1]
        rel = (out.float() - ref.float()).abs().max().item() / max(ref.abs().max().item(), 1e-30)
        if rel > tol:
            verdict["first_layer"] = i
            verdict["message"] += f"; the hidden state first differs after layer {i} " \
                                  f"(rel error {rel:.3g} there)"
            return
    verdict["first_layer"] = layers - 1
    verdict["message"] += (f"; every layer's output before the last agrees, so the last layer "
                           f"({layers - 1}) or the final norm differs")


def decode_verdict(tokens: Tensor, ref: Tensor, context: int) -> dict[str, Any]:
    """tokens, ref [batch, generate] (int64) -> the metrics JSON's `reference` entry."""
    differ = (tokens.cpu() != ref.cpu()).nonzero()
    verdict: dict[str, Any] = {"ok": differ.numel() == 0, "tolerance": 0,
                               "first_difference": None}
    if differ.numel():
        # earliest generated position first: later tokens follow from it
        seq, step = min(((int(b), int(t)) for b, t in differ.tolist()), key=lambda bt: bt[::-1])
        verdict["first_difference"] = {"sequence": seq, "generated_index": step,
                                       "position": context + step}
        verdict["message"] = (
            f"the generated tokens differ from Hugging Face generate: first at sequence {seq}, "
            f"generated token {step} (position {context + step}): {int(tokens[seq, step])} "
            f"against {int(ref[seq, step])}; {differ.shape[0]} of {tokens.numel()} tokens differ"
        )
    return verdict


def exit_on_mismatch(data: dict[str, Any] | None) -> None:
    """Rank 0 leaves with status 1 and the verdict's message when the output differs."""
    verdict = (data or {}).get("reference")
    if verdict is not None and not verdict["ok"]:
        raise SystemExit(f"planc: error[R004]: {verdict['message']}")
