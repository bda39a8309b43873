"""Decode metrics, MLPerf inference style, as plain arithmetic (no torch).

For one run of a batch of B sequences generating G tokens each:
  TTFT (time to first token): from the start to the first token of every sequence, i.e. the
       prefill of the prompt (all microbatches) and its argmax on the last stage;
  latency: from the start to the last token;
  TPOT (time per output token): (latency - TTFT) / (G - 1), the mean time of one decode step
       after the first token (undefined, None, when G == 1);
  output tokens/s: B * G / latency.
Each is the slowest rank's time (a pipeline has its tokens when its last stage does), median
over the timed repeats (TTFT and latency separately; TPOT from the two medians).
"""

from __future__ import annotations

import statistics
from typing import Any


def tpot_s(latency_s: float, ttft_s: float, generated: int) -> float | None:
    """MLPerf's time per output token: the time after the first token over the tokens after it."""
    if generated < 2:
        return None
    return (latency_s - ttft_s) / (generated - 1)


def output_tokens_per_s(batch: int, generated: int, latency_s: float) -> float:
    return batch * generated / latency_s


def decode_times(
    batch: int, generated: int, ttfts_s: list[float], latencies_s: list[float]
) -> dict[str, Any]:
    """The metrics JSON's timing keys from per-repeat TTFTs and latencies (seconds)."""
    ttft = statistics.median(ttfts_s)
    latency = statistics.median(latencies_s)
    tpot = tpot_s(latency, ttft, generated)
    rate = output_tokens_per_s(batch, generated, latency)
    return {
        "ttft_ms": ttft * 1e3,
        "tpot_ms": None if tpot is None else tpot * 1e3,
        "latency_ms": latency * 1e3,
        "output_tokens_per_s": rate,
        "tokens_per_s": rate,  # what `planc run`'s text summary prints
        "time_s": latency,
        "times_s": list(latencies_s),
        "ttfts_s": list(ttfts_s),
    }
