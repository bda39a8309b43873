"""Claims: a `require METRIC OP VALUE` line against the value planc computes (V600), against
the sound bound for time-based metrics (V700), and claims that must agree with each other
(V610: throughput and TPOT under one definition, with the unit that would reconcile them; V611:
a bandwidth claim against throughput x token size; V612: a GPU utilisation claim against the
compute the throughput claim needs; V710: power and energy claims against the devices'
datasheet TDP and peak compute, bounds that can refute a claim but never confirm one; V613:
an energy claim against the throughput and power claims it derives from; V720: an L2 hit rate
against the compulsory misses of a step, which only refute a rate above 100% or of 100% with
misses; any other rate is "conditional" on how often the kernels re-request each byte).
"""

from __future__ import annotations

from fractions import Fraction

from planc.compiler.ir import PlacementGraph
from planc.compiler.spec import PlanSpec
from planc.compiler.units import UNITS, human_bytes, human_count
from planc.cost.performance import human_time
from planc.diagnostics import Related
from planc.verifier.obligations import Obligation

CLAIM_TOLERANCE = Fraction(1, 100)  # `==` claims hold within 1% (claims are rounded numbers)
# Two stated numbers agree when within 5%: documents round to two significant digits.
AGREE = Fraction(5, 100)
TIME_UNITS = ("s", "ms", "us", "ns")


def claims(plan: PlanSpec, graph: PlacementGraph) -> list[Obligation]:
    """One obligation per claim, one for each claim with no value in this plan, and the
    consistency of claims that must agree."""
    from planc.cost.claims import claim_value  # local: avoids a cycle at import time

    out = []
    for r in plan.requires:
        if r.metric in _ELSEWHERE:
            continue
        got = claim_value(plan, graph, r.metric)
        if got is None:
            out.append(_not_applicable(plan, r))
            continue
        actual, unit_word, is_bound, how = got
        out.append(_claim(r, actual, unit_word, is_bound, how))
    out += consistency(plan, graph)
    out += bandwidth_agreement(plan)
    out += utilization_agreement(plan, graph)
    out += power_bounds(plan, graph)
    out += efficiency_agreement(plan)
    out += hit_rate_claims(plan, graph)
    return out


# checked elsewhere: memory by V401, bandwidth and utilisation against the throughput claim
_ELSEWHERE = ("memory", "bandwidth", "utilization", "power", "energy_per_token",
              "tokens_per_joule", "cache_hit_rate")
_NO_THROUGHPUT = "the plan claims no throughput to check it against"
_ABSENT = {"transfer": "no pipeline stage sends to another", "ring_step": "no ring attention",
           "expert_weights": "the model has no experts",
           "expert_weights_per_device": "the model has no experts",
           "collective": "no collective", "communication": "no communication",
           "bandwidth": f"it is throughput x token size, and {_NO_THROUGHPUT}",
           "utilization": f"it is FLOPs per token x throughput / peak, and {_NO_THROUGHPUT}",
           **{m: "the device has no `power` (its TDP): add `power 700 W` to its device block"
              for m in ("power", "energy_per_token", "tokens_per_joule")}}


def _not_applicable(plan: PlanSpec, r) -> Obligation:  # type: ignore[no-untyped-def]
    why = _ABSENT.get(r.metric, "the quantity is zero")
    return Obligation(
        kind="claim", code="V601", name=f"require {r.metric} {r.op} {r.text}",
        formula=lambda env, z: z.lift(False), check=lambda v: False,
        ok="", bad=f"`require {r.metric}` has no value in plan {plan.name!r}: {why}",
        span=r.span, hint="remove the claim, or write the plan that has this quantity",
        numbers={"claim": float(r.value)})


def _fmt(metric_unit: str, x) -> str:  # type: ignore[no-untyped-def]
    if metric_unit == "bytes":
        return human_bytes(x)
    if metric_unit == "count":
        return human_count(x)
    if metric_unit == "tokens_per_s":
        return f"{float(x):,.0f} tokens/s"
    if metric_unit == "seconds":
        return human_time(float(x))
    return str(x)


def _claim(r, actual: Fraction, unit: str, is_bound: bool,  # type: ignore[no-untyped-def]
           how: str | None = None) -> Obligation:
    claim = Fraction(r.value)
    op = r.op
    tol = claim * CLAIM_TOLERANCE

    def holds(a: Fraction) -> bool:
        return {"<=": a <= claim, ">=": a >= claim, "<": a < claim, ">": a > claim,
                "==": abs(a - claim) <= tol}[op]

    def formula(env, z):  # type: ignore[no-untyped-def]
        a = z.real(actual.numerator, actual.denominator)
        c = z.real(claim.numerator, claim.denominator)
        t = z.real(tol.numerator, tol.denominator)
        return {"<=": a <= c, ">=": a >= c, "<": a < c, ">": a > c,
                "==": z.And(a - c <= t, c - a <= t)}[op]

    value = _fmt(unit, actual)
    shown = value + (f" ({how})" if how else "")
    if is_bound:
        # a physical bound: a claim beyond it is refuted, one within it only "not refuted"
        return Obligation(
            kind="throughput_bound", code="V700", name=f"require {r.metric} {op} {r.text}",
            formula=formula, check=lambda v: holds(actual), mode="refute",
            ok=f"{r.metric} {op} {r.text} is within the physical bound ({value}"
               f"{'; ' + how if how else ''}); only a measurement can confirm it",
            bad=f"{r.metric} {op} {r.text} is impossible: the physical bound is {shown}",
            span=r.span, numbers={"claim": float(claim), "bound": float(actual)},
            hint="the bound is the slowest of compute, HBM and link time at peak rates, plus the "
                 "pipeline fill; no schedule can beat it")
    ratio = float(actual / claim) if claim else float("inf")
    return Obligation(
        kind="claim", code="V600", name=f"require {r.metric} {op} {r.text}",
        formula=formula, check=lambda v: holds(actual),
        ok=f"{r.metric} is {shown}, so `{r.metric} {op} {r.text}` holds",
        bad=f"{r.metric} is {shown}, not {op} {r.text} (computed/claimed = {ratio:.3g})",
        span=r.span, numbers={"claim": float(claim), "computed": float(actual)},
        hint="`==` allows 1% for rounding" if op == "==" else None)


def _time_text(seconds: Fraction) -> str:
    for i, unit in enumerate(TIME_UNITS):
        v = seconds * 1000 ** i
        if v >= 1 or unit == "ns":
            return f"{float(v):.4g} {unit}"
    return f"{float(seconds):.4g} s"


def _factor(ratio: Fraction) -> str:
    r = float(ratio)
    return f"{r:,.0f}x" if r >= 10 else f"{r:.3g}x"


def _unit_fix(r, ratio: Fraction) -> str:  # type: ignore[no-untyped-def]
    """The unit that makes a time claim agree, when the claims differ by a power of 1000."""
    number, _, unit = r.text.partition(" ")
    if unit not in TIME_UNITS:
        return "no change of unit makes them agree"
    for shift in (-3, -2, -1, 1, 2, 3):
        k = Fraction(1000) ** shift
        if abs(ratio / k - 1) <= AGREE:
            j = TIME_UNITS.index(unit) + shift
            if 0 <= j < len(TIME_UNITS):
                return (f"`tpot {r.op} {number} {TIME_UNITS[j]}` would agree (a unit factor of "
                        f"{1000 ** abs(shift):,})")
    return "no change of unit makes them agree"


def consistency(plan: PlanSpec, graph: PlacementGraph) -> list[Obligation]:
    """Throughput and TPOT claimed together must agree. Prefill (the seeds' definition, and
    planc's): TPOT = step / (batch x seq) = 1 / tokens/s. Decode (MLPerf): output tokens/s =
    batch x generate / (TTFT + (generate - 1) x TPOT) <= batch x generate / ((generate - 1) x
    TPOT)."""
    thr = next((r for r in plan.requires if r.metric == "throughput"), None)
    tpot = next((r for r in plan.requires if r.metric == "tpot"), None)
    if thr is None or tpot is None:
        return []
    rate, t = Fraction(thr.value), Fraction(tpot.value)
    if graph.phase == "decode":
        gen = max(2, graph.generate)
        most = Fraction(graph.batch * gen, gen - 1)  # tokens/s x TPOT can be no more
        implied = most / rate  # the largest TPOT the throughput allows
        ratio = t / implied
        holds = ratio <= 1 + AGREE
        rule = (f"{graph.batch} sequences x {gen} tokens in at least {gen - 1} TPOTs allow a "
                f"TPOT of at most {_time_text(implied)} at {thr.text}")
    else:
        implied = 1 / rate
        ratio = t / implied
        holds = abs(ratio - 1) <= AGREE
        rule = f"TPOT = 1 / throughput: {thr.text} is {_time_text(implied)} per token"
    return [_agreement("V610", tpot, thr, holds, rule, ratio,
                       None if holds else _unit_fix(tpot, ratio),
                       {"ratio": float(ratio), "implied_tpot_s": float(implied)})]


def _agreement(code: str, claim, thr, holds: bool, rule: str,  # type: ignore[no-untyped-def]
               ratio: Fraction, hint: str | None, numbers: dict[str, float]) -> Obligation:
    """A claim that must agree with the plan's throughput claim (`rule` says how)."""
    return Obligation(
        kind="claim_consistency", code=code,
        name=f"require {claim.metric} {claim.text} agrees with throughput {thr.text}",
        formula=lambda env, z: z.lift(holds), check=lambda v: holds,
        ok=f"`{claim.metric} {claim.op} {claim.text}` agrees with `throughput {thr.op} "
           f"{thr.text}` ({rule})",
        bad=f"`{claim.metric} {claim.op} {claim.text}` disagrees with `throughput {thr.op} "
            f"{thr.text}` by {_factor(ratio)} ({rule})",
        span=claim.span, hint=hint,
        related=(Related(thr.span, f"throughput {thr.text} claimed here"),) if thr.span else (),
        numbers=numbers)


def _rate_unit_fix(r, implied: Fraction) -> str:  # type: ignore[no-untyped-def]
    """The bandwidth unit under which the claimed number agrees with `implied` (B/s)."""
    number, _, unit = r.text.partition(" ")
    try:
        value = Fraction(number.replace(",", ""))
    except ValueError:
        return "no change of unit makes them agree"
    for u, (dim, k) in UNITS.items():
        if dim == "bytes_per_s" and u != unit and abs(value * k / implied - 1) <= AGREE:
            return f"`{r.metric} {r.op} {number} {u}` would agree"
    return "no change of unit makes them agree"


def _with_throughput(plan: PlanSpec, metric: str):  # type: ignore[no-untyped-def]
    """The plan's claim on `metric` and its throughput claim (either None when absent)."""
    def first(name: str):  # type: ignore[no-untyped-def]
        return next((r for r in plan.requires if r.metric == name), None)
    return first(metric), first("throughput")


def bandwidth_agreement(plan: PlanSpec) -> list[Obligation]:
    """V611: a bandwidth claimed as the rate tokens cross the network must be the claimed
    throughput x one token's hidden state (the seeds' arithmetic); stated numbers agree
    within 5%."""
    from planc.cost.traffic import token_size

    bw, thr = _with_throughput(plan, "bandwidth")
    if bw is None or thr is None:
        return [_not_applicable(plan, bw)] if bw else []
    size, how = token_size(plan)
    implied = Fraction(thr.value) * size
    ratio = Fraction(bw.value) / implied
    holds = abs(ratio - 1) <= AGREE
    rule = (f"throughput x token size: {thr.text} x {int(size):,} B ({how}) = "
            f"{human_bytes(implied)}/s")
    return [_agreement("V611", bw, thr, holds, rule, ratio,
                       None if holds else _rate_unit_fix(bw, implied),
                       {"ratio": float(ratio), "implied_bytes_per_s": float(implied)})]


def utilization_agreement(plan: PlanSpec, graph: PlacementGraph) -> list[Obligation]:
    """V612: a GPU utilisation claim must be what the plan's own throughput claim needs:
    FLOPs per token (what planc's placement executes) x tokens/s / (devices x peak FLOP/s),
    within 5% of the claimed figure for `==` (documents round), and never above 100%."""
    from planc.cost.traffic import flops_per_token

    u, thr = _with_throughput(plan, "utilization")
    if u is None or thr is None:
        return [_not_applicable(plan, u)] if u else []
    per_token, how = flops_per_token(graph)
    peak = plan.devices * plan.cluster.device.compute
    achieved = per_token * Fraction(thr.value) / peak * 100  # percent
    claim = Fraction(u.value)
    ratio = claim / achieved if achieved else Fraction(10**9)
    slack = claim * AGREE
    holds = {"==": abs(claim - achieved) <= slack, "<=": achieved <= claim + slack,
             "<": achieved < claim + slack, ">=": achieved >= claim - slack,
             ">": achieved > claim - slack}[u.op] and not (u.op in ("==", ">=", ">")
                                                             and claim > 100)
    rule = (f"{float(per_token) / 1e9:,.4g} GFLOP per token ({how}) x {thr.text} / "
            f"({plan.devices} x {float(plan.cluster.device.compute) / 1e12:,.4g} TFLOP/s) = "
            f"{float(achieved):.3g}%")
    hint = None
    if not holds:
        hint = ("no device runs above 100% of its peak" if claim > 100 else
                f"the throughput claim needs `utilization == {float(achieved):.3g}%`; at "
                f"{u.text} it would be {float(claim / achieved * Fraction(thr.value)):,.0f} "
                f"tokens/s")
    return [_agreement("V612", u, thr, holds, rule, ratio, hint,
                       {"ratio": float(ratio), "achieved_percent": float(achieved),
                        "flops_per_token": float(per_token)})]


# A claim of this much or less (power: or more) cannot hold; `<=` on power and `>=` on energy
# per token say nothing a bound can refute.
_ABOVE_REFUTES = {"power": True, "tokens_per_joule": True, "energy_per_token": False}


def power_bounds(plan: PlanSpec, graph: PlacementGraph) -> list[Obligation]:
    """V710. Power: all devices draw at most devices x TDP. Energy per token: at least the
    FLOPs per token at the datasheet's efficiency (peak FLOP/s at TDP); tokens per joule at
    most its inverse. Bounds from datasheet figures: a claim beyond one is refuted; within,
    only a measurement can confirm it. A power-capped device can be somewhat more efficient
    per FLOP than at TDP, which the messages say."""
    from planc.cost.traffic import flops_per_token

    dev = plan.cluster.device
    out: list[Obligation] = []
    for r in plan.requires:
        if r.metric not in _ABOVE_REFUTES:
            continue
        if dev.power is None:
            out.append(_not_applicable(plan, r))
            continue
        per_token, how = flops_per_token(graph)
        efficiency = Fraction(dev.compute, dev.power)  # FLOP per joule at peak and TDP
        if r.metric == "power":
            bound = Fraction(plan.devices * dev.power)
            rule = f"{plan.devices} devices x {dev.power:,} W TDP ({dev.name})"
            shown = f"{float(bound):,.0f} W"
        else:
            joules = per_token / efficiency
            bound = joules if r.metric == "energy_per_token" else 1 / joules
            rule = (f"{float(per_token) / 1e9:,.4g} GFLOP per token ({how}) / "
                    f"({float(dev.compute) / 1e12:,.4g} TFLOP/s / {dev.power:,} W); the compute "
                    "alone at the datasheet's efficiency: a bound, not an estimate (a "
                    "power-capped device can do somewhat better per FLOP)")
            shown = (f"{float(joules) * 1000:.4g} mJ per token" if r.metric == "energy_per_token"
                     else f"{float(bound):,.4g} tokens/J")
        out.append(_power_claim(r, bound, shown, rule))
    return out


def _power_claim(r, bound: Fraction, shown: str,  # type: ignore[no-untyped-def]
                 rule: str) -> Obligation:
    claim = Fraction(r.value)
    tol = claim * CLAIM_TOLERANCE if r.op == "==" else 0
    above = _ABOVE_REFUTES[r.metric]
    side = r.op in ((">=", ">", "==") if above else ("<=", "<", "=="))
    beyond = claim - tol > bound if above else claim + tol < bound
    holds = not (side and beyond)
    word = "at most" if above else "at least"
    return Obligation(
        kind="power_bound", code="V710", name=f"require {r.metric} {r.op} {r.text}",
        formula=lambda env, z: z.lift(holds), check=lambda v: holds, mode="refute",
        ok=f"{r.metric} {r.op} {r.text} is within the bound ({word} {shown}: {rule}); only a "
           "measurement can confirm it",
        bad=f"{r.metric} {r.op} {r.text} is impossible: it is {word} {shown} ({rule})",
        span=r.span, numbers={"claim": float(claim), "bound": float(bound)},
        hint="a datasheet bound refutes a claim beyond it; one within it needs a measurement")


def efficiency_agreement(plan: PlanSpec) -> list[Obligation]:
    """V613: tokens per joule claimed beside a throughput and a power must be their quotient
    (energy per token its inverse): the documents' own arithmetic, within 5%."""
    power = next((r for r in plan.requires if r.metric == "power"), None)
    out = []
    for metric in ("tokens_per_joule", "energy_per_token"):
        e, thr = _with_throughput(plan, metric)
        if e is None or thr is None or power is None:
            continue
        implied = Fraction(thr.value) / Fraction(power.value)  # tokens/J
        if metric == "energy_per_token":
            implied = 1 / implied
        ratio = Fraction(e.value) / implied
        holds = abs(ratio - 1) <= AGREE
        shown = (f"{float(implied):.3g} tokens/J" if metric == "tokens_per_joule"
                 else f"{float(implied) * 1000:.4g} mJ per token")
        rule = f"{thr.text} / {power.text} = {shown}"
        out.append(_agreement("V613", e, thr, holds, rule, ratio,
                              None if holds else f"the throughput and power claims give {shown}",
                              {"ratio": float(ratio), "implied": float(implied)}))
    return out


def _pct(x: Fraction) -> str:
    return f"{float(x) * 100:.3g}%"


def hit_rate_claims(plan: PlanSpec, graph: PlacementGraph) -> list[Obligation]:
    """V720: an L2 hit rate, read as every device's hit rate over one forward step's read
    requests (cost/hit_rate.py). Physics refutes only a rate above 100%, or 100% where some
    device has compulsory misses; for any other rate the verdict is "conditional": it holds
    only if the kernels request each byte the step must read at least k times on average,
    k = compulsory / ((1 - rate) x unique), shown for the device class that needs the most."""
    from planc.cost.hit_rate import step_reads

    out = []
    for r in plan.requires:
        if r.metric != "cache_hit_rate":
            continue
        reads = step_reads(plan, graph)
        out.append(_hit_rate_claim(r, reads) if reads else _not_applicable(plan, r))
    return out


def _hit_rate_claim(r, reads) -> Obligation:  # type: ignore[no-untyped-def]
    rate = Fraction(r.value) / 100  # a fraction of requests
    if rate < 1:  # the class that needs the most requests per byte it must read
        worst = max(reads, key=lambda x: (x.rerequests(rate), x.compulsory))
    else:  # the class with the most compulsory misses
        worst = max(reads, key=lambda x: x.compulsory)
    numbers: dict[str, float] = {
        "claim": float(r.value), "unique_bytes": worst.unique,
        "compulsory_bytes": worst.compulsory, "cache_bytes": worst.capacity,
        "streaming_hit_rate_at_most": float(worst.streaming_rate) * 100}
    reads_text = (f"per step, device class {worst.cls} must read {human_bytes(worst.unique)} "
                  f"that exist before it ({worst.parts()}); at most the L2's "
                  f"{human_bytes(worst.capacity)} can be resident at the start, so at least "
                  f"{human_bytes(worst.compulsory)} miss")
    claim = f"cache_hit_rate {r.op} {r.text}"
    ok, bad, hint = "", "", None
    if rate > 1 or (rate == 1 and r.op == ">"):
        holds = False
        bad = f"{claim} is impossible: hits are a subset of requests, so no hit rate exceeds 100%"
        hint = "a hit rate is hits / requests, at most 100%"
    elif r.op in ("<=", "<"):
        holds = True
        ok = (f"{claim} is conditional: physics sets no floor (every request may miss), so "
              "only a measurement can check it")
    elif rate == 1:
        holds = worst.compulsory == 0
        bad = f"{claim} is impossible: {reads_text}"
        hint = ("a step that must read more than the L2 holds misses at least once per byte "
                "beyond it; a measured rate is below 100%")
        ok = (f"{claim} is conditional: it holds only if every byte device class {worst.cls} "
              f"reads per step ({human_bytes(worst.unique)}: {worst.parts()}) is resident in the "
              f"{human_bytes(worst.capacity)} L2 when the step starts; planc does not model the "
              "kernels' access order, so it can neither confirm nor refute it")
    else:
        holds = True
        k = worst.rerequests(rate)
        needed = worst.requests_needed(rate) or Fraction(0)
        numbers.update({"rerequests_k": float(k), "requests_at_least_bytes": float(needed)})
        if worst.compulsory == 0:
            cond = (f"every byte device class {worst.cls} must read per step "
                    f"({human_bytes(worst.unique)}: {worst.parts()}) fits the "
                    f"{human_bytes(worst.capacity)} L2, so no miss is compulsory: it holds if "
                    "those bytes stay resident")
        else:
            cond = (f"{reads_text}; at {r.text} misses are at most {_pct(1 - rate)} of requests, "
                    f"so requests >= {human_bytes(worst.compulsory)} / {float(1 - rate):.3g} = "
                    f"{human_bytes(needed)}, {float(k):.3g} x the {human_bytes(worst.unique)}: ")
            cond += (f"the kernels must request each of those bytes at least {float(k):.3g} "
                     "times on average" if k > 1 else
                     "requesting each byte once suffices, if the resident bytes are the ones "
                     "requested")
            cond += f" (requested once each, at most {_pct(worst.streaming_rate)} could hit)"
        ok = (f"{claim} is conditional: {cond}; planc does not model the kernels' access order, "
              "so it can neither confirm nor refute it")
    return Obligation(
        kind="hit_rate", code="V720", name=f"require {claim}",
        formula=lambda env, z: z.lift(holds), check=lambda v: holds,
        mode="conditional", ok=ok, bad=bad, span=r.span, numbers=numbers, hint=hint)
