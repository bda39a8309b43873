"""A plan's step time, TTFT, TPOT and tokens/s: estimated, and bounded.

The estimate (cost/time.step_estimate: kernels at measured efficiencies, no overlap) is what
synthesis ranks candidates by and what `planc check` prints; the bound (step_lower_bound: peak
rates, perfect overlap) is what claims are refuted against. Both use one set of definitions:
  prefill: step = one forward of the batch; tokens/s = batch x seq / step;
  decode (MLPerf): TTFT = the prompt's prefill; TPOT = one decode step;
           latency = TTFT + (generate - 1) x TPOT; tokens/s = batch x generate / latency.
"""

from __future__ import annotations

from fractions import Fraction

from planc.compiler.ir import PlacementGraph
from planc.cost.time import Rates, stage_parts, step_estimate, step_lower_bound

# What synthesis minimises for each objective word (tokens/s is negated: larger is better).
OBJECTIVE_METRIC = {"tpot": "tpot_s", "ttft": "ttft_s", "throughput": "tokens_per_s"}


def performance(graph: PlacementGraph, rates: Rates, bound: bool = False
                ) -> dict[str, Fraction]:
    """The plan's times in seconds and its tokens/s: estimates, or with bound=True the sound
    bounds (times no schedule beats, a rate none exceeds). Zero-time plans give {}."""

    def step(phase: str) -> Fraction:
        if bound:
            return step_lower_bound(graph, rates, phase)
        return Fraction(step_estimate(graph, rates, phase=phase))

    if graph.phase == "decode":
        ttft, tpot = step("prefill"), step("decode")
        latency = ttft + max(0, graph.generate - 1) * tpot
        if latency <= 0:
            return {}
        return {"ttft_s": ttft, "tpot_s": tpot, "latency_s": latency,
                "tokens_per_s": Fraction(graph.batch * graph.generate) / latency}
    t = step("prefill")
    if t <= 0:
        return {}
    tokens = graph.batch * graph.seq
    # the seeds' prefill TPOT: step time per token processed (1 / throughput)
    return {"step_s": t, "ttft_s": t, "tpot_s": t / tokens, "latency_s": t,
            "tokens_per_s": Fraction(tokens) / t}


def objective_value(graph: PlacementGraph, rates: Rates, target: str) -> float:
    """What `minimize`/`maximize target` ranks by, smaller is better: `time` is TPOT for a
    decode plan (the rate users see while tokens stream) and time per token for a prefill."""
    est = performance(graph, rates)
    if not est:
        return 0.0
    if target == "throughput":
        return -float(est["tokens_per_s"])
    metric = OBJECTIVE_METRIC.get(target, "tpot_s")
    return float(est[metric])


def summary(graph: PlacementGraph, rates: Rates) -> dict[str, dict[str, float]]:
    """{"estimate": {...}, "bound": {...}} in floats, for reports (JSON and text)."""
    return {"estimate": {k: float(v) for k, v in performance(graph, rates).items()},
            "bound": {k: float(v) for k, v in performance(graph, rates, bound=True).items()}}


def human_time(s: float) -> str:
    if s == 0:
        return "0 s"
    if s >= 1:
        return f"{s:.4g} s"
    return f"{s * 1e3:.4g} ms" if s >= 1e-3 else f"{s * 1e6:.4g} us"


def summary_text(perf: dict[str, dict[str, float]], phase: str) -> str:
    """One line: the estimates, then the sound bounds they can never beat."""
    est, bnd = perf.get("estimate", {}), perf.get("bound", {})
    if not est:
        return "no estimate (the plan does no work)"
    if phase == "decode":
        e = (f"TTFT {human_time(est['ttft_s'])}, TPOT {human_time(est['tpot_s'])}, "
             f"{est['tokens_per_s']:,.0f} tokens/s")
        b = (f"TTFT >= {human_time(bnd['ttft_s'])}, TPOT >= {human_time(bnd['tpot_s'])}, "
             f"<= {bnd['tokens_per_s']:,.0f} tokens/s") if bnd else "-"
    else:
        e = (f"step {human_time(est['step_s'])}, {est['tokens_per_s']:,.0f} tokens/s, "
             f"{human_time(est['tpot_s'])} per token")
        b = (f"step >= {human_time(bnd['step_s'])}, <= {bnd['tokens_per_s']:,.0f} tokens/s"
             if bnd else "-")
    return f"{e}; sound bound: {b}" if bnd else e


def bound_arithmetic(graph: PlacementGraph, rates: Rates, phase: str = "prefill") -> str:
    """How the step bound arises: the slowest stage's compute, HBM and link times for one
    microbatch at peak rates (the largest counts), and the pipeline fill."""
    parts = stage_parts(graph, rates, phase)
    if not parts:
        return ""
    worst = max(parts, key=max)
    what = ", ".join(f"{name} {human_time(float(t))}"
                     for name, t in zip(("compute", "HBM", "links"), worst))
    m, s = graph.microbatches, len(parts)
    fill = (f"; {s} stages" if s > 1 else "; 1 stage") + (
        f" + {m - 1} more microbatches" if m > 1 else "") if s > 1 or m > 1 else ""
    unit = "microbatch per decode step" if phase == "decode" else "microbatch"
    return f"per {unit}, the slowest stage: {what}{fill}"
