"""Build the obligations of one plan from its spec and placement graph.

Variables (z3 Ints, pinned to the plan's values by the solver): `mesh.AXIS` for each axis size,
`microbatches`, `batch`, `seq`. Model sizes are constants. Obligations are listed in a fixed
order so reports are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import cache, reduce
from math import prod
from typing import Any

from planc.compiler.ir import PlacementGraph
from planc.compiler.lower import lower
from planc.compiler.spec import PlanSpec, RequireSpec
from planc.compiler.splits import microbatches, seq_slice_kind
from planc.compiler.units import human_bytes
from planc.diagnostics import Related, Span
from planc.layout.slices import SliceKind, cdiv, owner, pieces, pieces_per_part, slice_kind
from planc.layout.strategies import DIVISIBILITY
from planc.verifier.claim_obligations import claims
from planc.verifier.obligations import Env, Obligation

CODE = {dim: code for code, dim in DIVISIBILITY}


def variables(plan: PlanSpec) -> dict[str, int]:
    v = {f"mesh.{a}": s for a, s in plan.mesh if s is not None}
    v["microbatches"] = microbatches(plan)
    v["batch"] = plan.workload.batch or 0
    v["seq"] = plan.workload.seq or 0
    return v


def _prod(xs: list, z=None):  # type: ignore[no-untyped-def]
    """Product of z3 terms (or ints); 1 for none."""
    return reduce(lambda a, b: a * b, xs[1:], xs[0]) if xs else (z.int(1) if z else 1)


@cache
def _divisors(n: int) -> list[int]:
    """The divisors of n in increasing order (O(sqrt n))."""
    if n <= 0:
        return []
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def _axes_text(axes: tuple[str, ...]) -> str:
    return " x ".join(axes)


def build(plan: PlanSpec, graph: PlacementGraph, hints: bool = True) -> list[Obligation]:
    """Every obligation of a plan, in a fixed order. hints=False skips the (costlier) search
    for the nearest fix of a violation: synthesis screens thousands of candidates with it."""
    obs: list[Obligation] = []
    obs += _device_count(plan)
    obs += _divisibility(plan)
    obs += _coverage(plan)
    obs += _memory(plan, graph, hints)
    obs += claims(plan, graph)
    return obs


# ---------------------------------------------------------------------------------------------


def _device_count(plan: PlanSpec) -> list[Obligation]:
    names = [f"mesh.{a}" for a, _ in plan.mesh]
    n = plan.devices
    have = plan.cluster.count
    sizes = " x ".join(f"{a}={s}" for a, s in plan.mesh)
    related = ((Related(plan.cluster.count_span, f"cluster {plan.cluster.name!r} has {have} "
                        "devices"),) if plan.cluster.count_span else ())
    return [Obligation(
        kind="device_count", code="V100", name="mesh devices <= cluster devices",
        formula=lambda env, z: _prod([env[x] for x in names], z) <= have,
        check=lambda v: prod(v[x] for x in names) <= have,
        ok=f"mesh {sizes} uses {n} of the cluster's {have} devices",
        bad=f"mesh {sizes} needs {n} devices; cluster {plan.cluster.name!r} has {have}",
        span=plan.mesh_span, related=related,
        hint=f"shrink the mesh to {have} devices or use a larger cluster",
        numbers={"mesh_devices": n, "cluster_devices": have})]


def _split_check(plan: PlanSpec, dim: str, size: int, code: str, extra: int = 1,
                 why: str = "") -> Obligation | None:
    axes = plan.axes_of(dim)
    if dim == "kv_heads" and not axes:
        axes = plan.axes_of("heads")  # kv_heads follow heads when not listed
    if not axes:
        return None
    names = [f"mesh.{a}" for a in axes]
    deg = plan.degree("heads" if dim == "kv_heads" and not plan.axes_of(dim) else dim)
    need = deg * extra
    sh = plan.shard_of(dim) or plan.shard_of("heads")
    span = None
    if sh is not None:
        span = next((s for d, s in zip(sh.dims, sh.dim_spans) if d == dim), sh.span)
    by = _axes_text(axes) + (f" x {extra}" if extra > 1 else "")
    good = [d for d in _divisors(size) if d % extra == 0]
    if dim == "head_dim":  # V310 also needs RoPE pairs whole: only splits of head_dim / 2
        good = [d for d in good if size % (2 * d) == 0]
    # a degree above the cluster's devices fails V100 whatever it divides: not a candidate
    good = [d for d in good if d // extra <= plan.cluster.count][:12]
    what = _axes_text(axes) if len(axes) == 1 else f"the product {_axes_text(axes)}"
    hint = (f"{what}{' x ' + str(extra) if extra > 1 else ''} must divide {size}; try "
            f"{what} in {{{', '.join(str(d // extra) for d in good)}}}") if good else None
    if hint and len(axes) == 1:  # the other obligations may rule some out: planc can search
        hint += f", or write `{axes[0]}=?` in the mesh and planc picks a size that proves"
    model_span = plan.model.spans.get(dim)
    related = (Related(model_span, f"{dim} = {size} set here"),) if model_span else ()
    return Obligation(
        kind="divisibility", code=code, name=f"{dim} % {by}",
        formula=lambda env, z: size % (_prod([env[x] for x in names]) * extra) == 0,
        check=lambda v: size % (prod(v[x] for x in names) * extra) == 0,
        ok=f"{dim} ({size}) is divisible by {by} ({need}){why}",
        bad=f"{dim} ({size}) is not divisible by {by} ({need}){why}",
        span=span, hint=hint, related=related, numbers={"size": size, "degree": need})


def _divisibility(plan: PlanSpec) -> list[Obligation]:
    m, w = plan.model, plan.workload
    sizes = {"heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim, "ffn": m.ffn,
             "experts": m.experts, "batch": w.batch or 0}
    # seq (zig-zag, the decode prompt) and layers (explicit stages) have rules of their own below
    out: list[Obligation | None] = [
        _split_check(plan, dim, sizes[dim], code) for code, dim in DIVISIBILITY
        if dim in sizes and (dim != "experts" or m.experts)]
    seq_sh = plan.shard_of("seq")
    if seq_sh is not None:
        kind = seq_slice_kind(plan)
        halves = pieces_per_part(kind)
        # decode: the prompt is what runs sequence-parallel (generated tokens are appended
        # round-robin to the ranks' cache chunks), so the prompt length must divide
        seq_len = w.context if w.phase == "decode" else (w.seq or 0)
        deg = plan.degree("seq")
        plain = (f" (contiguous chunks, no zig-zag: {seq_len} is not a multiple of 2 x {deg}, "
                 "so later ranks do more of the causal attention)"
                 if seq_sh.attention in ("ring", "gather") and deg > 1 and halves == 1
                 and seq_len % deg == 0 else "")
        out.append(_split_check(plan, "seq", seq_len, CODE["seq"], halves,
                                (" (zig-zag: 2 chunks per rank)" if halves > 1 else plain)
                                + (" (the decode prompt, context)" if w.phase == "decode"
                                   else "")))
    lay = plan.shard_of("layers")
    if lay is not None and not lay.stages:
        out.append(_split_check(plan, "layers", m.layers, CODE["layers"]))
    if lay is not None:
        dp_names = [f"mesh.{a}" for a in plan.axes_of("batch")]
        batch = w.batch or 0
        nmb = microbatches(plan)
        b_local = cdiv(batch, plan.degree("batch"))
        span = lay.microbatches_span or lay.span
        out.append(Obligation(
            kind="divisibility", code="V209", name="local batch % microbatches",
            formula=lambda env, z: (env["batch"] / _prod([env[x] for x in dp_names]))
            % env["microbatches"] == 0,
            check=lambda v: (v["batch"] // prod(v[x] for x in dp_names)) % v["microbatches"] == 0,
            ok=f"the local batch ({b_local}) splits into {nmb} microbatches",
            bad=f"the local batch ({b_local}) does not split into {nmb} microbatches",
            span=span, hint="microbatches must divide the batch per pipeline: try one of "
            f"{{{', '.join(str(d) for d in _divisors(b_local)[:12])}}}",
            numbers={"local_batch": b_local, "microbatches": nmb}))
    if plan.compress_mlp_2_4:
        f_axes = [f"mesh.{a}" for a in plan.axes_of("ffn")]
        f_local = m.ffn // max(1, plan.degree("ffn"))
        out.append(Obligation(
            kind="divisibility", code="V211", name="2:4 local widths % 8",
            formula=lambda env, z: z.And(m.ffn % (_prod([env[x] for x in f_axes], z) * 8) == 0,
                                         z.int(m.hidden % 8) == 0),
            check=lambda v: m.ffn % (prod(v[x] for x in f_axes) * 8) == 0 and m.hidden % 8 == 0,
            ok=f"2:4 sparsity: the MLP's local input widths (hidden {m.hidden}, ffn {f_local}) "
               "are multiples of 8 (groups of 4, metadata in whole bytes)",
            bad=f"2:4 sparsity needs the MLP's local input widths divisible by 8: hidden "
                f"{m.hidden}, local ffn {f_local}",
            span=plan.compress_span, hint="choose an ffn split whose local width is a multiple "
            "of 8, or drop `compress mlp sparse 2:4`",
            numbers={"hidden": m.hidden, "ffn_local": f_local}))
    hd = plan.shard_of("head_dim")
    if hd is not None:
        names = [f"mesh.{a}" for a in hd.axes]
        d = m.head_dim
        pairs = pieces_per_part(slice_kind("head_dim"))
        span = next((s for x, s in zip(hd.dims, hd.dim_spans) if x == "head_dim"), hd.span)
        out.append(Obligation(
            kind="rope_pairing", code="V310", name="head_dim % (2 x head_dim split)",
            formula=lambda env, z: d % (pairs * _prod([env[x] for x in names])) == 0,
            check=lambda v: d % (pairs * prod(v[x] for x in names)) == 0,
            ok=f"each device's head_dim slice keeps RoPE pairs (i, i + {d // 2}) together "
               f"(head_dim {d} splits into {2 * plan.degree('head_dim')} half-slices)",
            bad=f"RoPE rotates dimension i with i + {d // 2}; a split of head_dim {d} over "
                f"{plan.degree('head_dim')} cannot keep every pair on one device",
            span=span, hint=f"head_dim must be divisible by 2 x {_axes_text(hd.axes)}",
            numbers={"head_dim": d, "degree": plan.degree("head_dim")}))
    return [o for o in out if o is not None]


def _coverage(plan: PlanSpec) -> list[Obligation]:
    """Every index of every split dimension is owned by exactly one shard, for all indices."""
    out = []
    m, w = plan.model, plan.workload
    sizes = {"heads": m.heads, "kv_heads": m.kv_heads, "ffn": m.ffn, "experts": m.experts,
             "batch": w.batch or 0, "seq": w.seq or 0, "head_dim": m.head_dim,
             "layers": m.layers, "vocab": m.vocab or 0}  # vocab: padded, so no divisibility
    for sh in plan.shards:
        for dim in sh.dims:
            D = sizes[dim]
            n = plan.degree(dim)
            if n <= 1 or D <= 0:
                continue
            if dim == "layers" and sh.stages:
                ranges = [(a, b) for a, b in sh.stages]
                out.append(_stage_coverage(plan, sh, ranges, D, n))
                continue
            kind = seq_slice_kind(plan) if dim == "seq" else slice_kind(dim)
            out.append(_exact_cover(dim, D, n, kind, sh.span))
    return out


def _layout(dim: str, D: int, n: int, kind: SliceKind):  # type: ignore[no-untyped-def]
    """How the runtime lays a dimension out over n shards, symbolically in the shard index r
    (planc/layout/slices.py, with z3's If and integer division).

    Returns (ranges, witness, name): ranges(r, z) are the [lo, min(hi, cap)) index ranges shard
    r owns, as (lo, hi, cap) with lo and hi linear in r; witness(i, z) is the shard that should
    own index i. Coverage is then quantifier-free: for every i in [0, D) the witness owns i and
    lies in [0, n), and no two distinct shards own the same i (i, r1, r2 are free, hence
    universal in the obligation).
    """
    names = {"zigzag": "zig-zag", "rope_paired": "RoPE-paired", "even": "contiguous"}
    return (lambda r, z: pieces(kind, D, n, r),
            lambda i, z: owner(kind, D, n, i, ite=z.If, div=lambda a, b: a / b), names[kind])


def _exact_cover(dim: str, D: int, n: int, kind: SliceKind,  # type: ignore[no-untyped-def]
                 span) -> Obligation:
    ranges, witness, layout = _layout(dim, D, n, kind)

    def owns(r, i, z):  # type: ignore[no-untyped-def]
        return z.Or(*[z.And(lo <= i, i < hi, i < cap) for lo, hi, cap in ranges(r, z)])

    def formula(env, z):  # type: ignore[no-untyped-def]
        i, r1, r2 = z.var(f"i_{dim}"), z.var(f"r1_{dim}"), z.var(f"r2_{dim}")
        inside = z.And(i >= 0, i < D)
        w = witness(i, z)
        some_owner = z.Implies(inside, z.And(w >= 0, w < n, owns(w, i, z)))
        one_owner = z.Implies(z.And(inside, r1 >= 0, r1 < n, r2 >= 0, r2 < n, r1 != r2),
                              z.Not(z.And(owns(r1, i, z), owns(r2, i, z))))
        return z.And(some_owner, one_owner)

    return Obligation(
        kind="coverage", code="V300", name=f"{dim} covered exactly once",
        formula=formula, check=lambda v: True,
        ok=f"every index of {dim} (0..{D - 1}) is owned by exactly one of {n} shards ({layout})",
        bad=f"some index of {dim} is owned by no shard or by two ({layout} layout over {n})",
        span=span, quantified=True, numbers={"size": D, "shards": n})


def _stage_coverage(plan: PlanSpec, sh, ranges: list[tuple[int, int]], L: int, n: int
                    ) -> Obligation:  # type: ignore[no-untyped-def]
    text = ", ".join(f"[{a}..{b}]" for a, b in ranges)

    def formula(env, z):  # type: ignore[no-untyped-def]
        i = z.var("i_layer")
        count = z.Sum(*[z.If(z.And(a <= i, i <= b), z.int(1), z.int(0)) for a, b in ranges])
        cover = z.ForAll([i], z.Implies(z.And(0 <= i, i < L), count == 1))
        inside = z.And(*[z.And(z.int(a) >= 0, z.int(b) < L) for a, b in ranges])
        contiguous = [z.int(ranges[k][1]) + 1 == ranges[k + 1][0] for k in range(len(ranges) - 1)]
        return z.And(cover, inside, *contiguous, z.int(len(ranges)) == n)

    return Obligation(
        kind="coverage", code="V301", name="stages cover the layers",
        formula=formula, check=lambda v: True,
        ok=f"stages {text} cover layers 0..{L - 1} once each, in order, one per pipeline rank",
        bad=f"stages {text} must cover layers 0..{L - 1} exactly once, contiguously and in "
            f"order, with one stage per pipeline rank ({n})",
        span=sh.stages_span or sh.span, quantified=True,
        hint=f"write {n} ranges like [0..{L // n - 1}], [{L // n}..{2 * L // n - 1}], ...",
        numbers={"layers": L, "stages": len(ranges), "pipeline": n})


# ---------------------------------------------------------------------------------------------


def _breakdown(mem: dict[str, int]) -> str:
    parts = [f"{k} {human_bytes(mem[k])}" for k in ("weights", "activations", "kv_cache",
                                                      "buffers", "reserve") if mem.get(k)]
    return ", ".join(parts)


def memory_limits(plan: PlanSpec, cap: int) -> list[tuple[str, int, bool, RequireSpec | None]]:
    """(label, bytes, strict, require line) of each per-device memory limit: the device's
    capacity and every `require memory` (strict for `<`)."""
    out: list[tuple[str, int, bool, RequireSpec | None]] = [("capacity", cap, False, None)]
    for r in plan.requires:
        if r.metric == "memory":
            lim = (int(r.value * cap / 100) if r.unit == "percent" else int(r.value))
            lim = max(1, lim)  # a limit that rounds to 0 bytes still divides the ratio below
            out.append((f"require memory {r.op} {r.text}", lim, r.op == "<", r))
    return out


def memory_fits(plan: PlanSpec, peak: int, cap: int) -> bool:
    """peak is within every memory limit of the plan."""
    return all(peak < lim if strict else peak <= lim
               for _, lim, strict, _ in memory_limits(plan, cap))


def _within(amount: int, limit: int, strict: bool
            ) -> tuple[Callable[[Env, Any], Any], Callable[[dict[str, int]], bool]]:
    """amount < limit (strict) or amount <= limit: the formula and its check, both constant."""
    def formula(env: Env, z: Any) -> Any:
        return z.int(amount) < limit if strict else z.int(amount) <= limit

    def check(v: dict[str, int]) -> bool:
        return amount < limit if strict else amount <= limit

    return formula, check


def _memory(plan: PlanSpec, graph: PlacementGraph, hints: bool = True) -> list[Obligation]:
    out = []
    limits: list[tuple[str, int, str, Span | None]] = []
    cap = graph.device_capacity
    # the rows each expert processes depend on the router: the model counts a balanced share
    # (cost/memory.moe_terms), so a router that favours some experts peaks higher
    routing = "; MoE rows as if routing were balanced" if plan.model.experts else ""
    for label, lim, _, r in memory_limits(plan, cap):
        limits.append((label, lim, "V401" if r else "V400",
                       r.span if r else plan.cluster.device.span))
    for cls in graph.classes:
        peak = cls.memory["peak"]
        where = f"device class {cls.id} ({cls.count} device{'s' if cls.count != 1 else ''}, "\
                f"layers {cls.layers[0]}.."\
                f"{cls.layers[1] - 1})"
        for label, lim, code, span in limits:
            hint = _memory_hint(plan, cls.id, peak, lim) if hints else None
            strict = label.startswith("require memory <") and "<=" not in label
            formula, check = _within(peak, lim, strict)
            out.append(Obligation(
                kind="hbm_capacity", code=code, name=f"hbm {cls.id} ({label})",
                formula=formula, check=check,
                ok=f"{where}: {human_bytes(peak)} of {human_bytes(lim)} "
                   f"({100 * peak / lim:.1f}%) [{_breakdown(cls.memory)}{routing}]",
                bad=f"{where}: {human_bytes(peak)} placed, {human_bytes(lim)} available "
                    f"({label}) [{_breakdown(cls.memory)}{routing}]",
                span=span if code == "V401" else plan.mesh_span, hint=hint,
                numbers={"peak": peak, "limit": lim, "class": cls.id}))
        if cls.cache_resident:
            c = graph.cache_capacity
            res = cls.cache_resident
            formula, check = _within(res, c, False)
            out.append(Obligation(
                kind="cache_capacity", code="V500", name=f"cache {cls.id}",
                formula=formula, check=check,
                ok=f"{where}: resident working set {human_bytes(res)} fits L2 {human_bytes(c)}",
                bad=f"{where}: resident working set {human_bytes(res)} exceeds L2 "
                    f"{human_bytes(c)}",
                span=(plan.shard_of("layers").span if plan.shard_of("layers") else None),  # type: ignore[union-attr]
                hint=cache_fit_hint(plan, cls.memory["weights"], res - cls.memory["weights"],
                                    cls.layers[1] - cls.layers[0], c) if hints and res > c
                else None,
                numbers={"resident": res, "cache": c, "class": cls.id}))
    return out


def cache_fit_hint(plan: PlanSpec, weights: int, act: int, n_layers: int, cache: int) -> str:
    """What to change so a fit-cache stage fits L2: weights and activations, each with numbers.

    Resident = the stage's weights (after compression) + one microbatch's residual stream
    [tokens, hidden] (what the runtime keeps between layers; transient buffers stream).
    """
    from planc.cost.claims import layer_weight_bytes

    m = plan.model
    layer = layer_weight_bytes(plan)
    out = []
    if weights + act > cache and layer < cache:
        per_stage = max(1, (cache - min(act, cache - 1)) // layer)
        need = cdiv(m.layers, per_stage)
        if per_stage < n_layers:
            out.append(f"{per_stage} layer(s) of {human_bytes(layer)} fit per stage: the pipeline "
                       f"axis needs at least {need} devices")
    if layer >= cache:
        # each format from the dense weights: a plan that already compresses is not compressed
        # twice, and its own format is named, not listed as an alternative
        fixes = []
        now = (plan.compress_int8, plan.compress_mlp_2_4)
        for fmt, words in (((False, False), "dense"), ((True, False), "int8"),
                           ((False, True), "2:4 MLP"), ((True, True), "int8 + 2:4")):
            if fmt == now:
                continue
            b = layer_weight_bytes(replace(plan, compress_int8=fmt[0], compress_mlp_2_4=fmt[1]))
            fixes.append(f"{words} {human_bytes(b)}")
            if b < cache:
                break
        current = {(True, False): " (int8)", (False, True): " (2:4 MLP)",
                   (True, True): " (int8 + 2:4)"}.get(now, "")
        best = replace(plan, compress_int8=True, compress_mlp_2_4=True)
        hidden = m.hidden
        while hidden > 64:
            hidden //= 2
            r = hidden / m.hidden
            small = replace(m, hidden=hidden, ffn=max(1, int(m.ffn * r)),
                            head_dim=max(2, int(m.head_dim * r)))
            if layer_weight_bytes(replace(best, model=small)) < cache:
                break
        out.append(f"one layer's weights are {human_bytes(layer)}{current} against "
                   f"{human_bytes(cache)} of L2 ({'' if current else 'compressed: '}"
                   f"{', '.join(fixes)}); with int8 + 2:4 a layer fits from "
                   f"hidden {hidden}, ffn {int(m.ffn * hidden / m.hidden)} down")
    if act >= cache // 2:
        per_token = m.hidden * m.dtype_bytes
        tokens = max(0, (cache - min(layer, cache)) // per_token)
        if tokens:
            out.append(f"one microbatch's residual stream is {human_bytes(act)}; at most "
                       f"{tokens} tokens per microbatch leave room for the weights (shorter "
                       "sequences, more microbatches, or decode)")
        else:
            out.append(f"the activations need L2 too: one microbatch's residual stream is "
                       f"{human_bytes(act)} (one sequence at least; decode keeps it small)")
    return "; ".join(out) or "compress the weights or add pipeline stages"


def _memory_hint(plan: PlanSpec, cid: str, peak: int, limit: int) -> str | None:
    """The smallest microbatch increase that fits, found by lowering variants (cheap)."""
    if peak <= limit:
        return None
    g = lower(plan)
    cls = g.class_by_id(cid)
    if cls.memory["weights"] + cls.memory["reserve"] > limit:  # no batch can fix that
        from planc.verifier.advice import weights_alone_text

        return weights_alone_text(plan, limit)
    lay = plan.shard_of("layers")
    tried = []
    if lay is not None and plan.workload.batch:
        b_local = cdiv(plan.workload.batch, plan.degree("batch"))
        cur = microbatches(plan)
        for mbs in sorted(d for d in _divisors(b_local) if d > cur):
            shards = tuple(replace(s, microbatches=mbs) if s is lay else s for s in plan.shards)
            g = lower(replace(plan, shards=shards))
            p = max(c.memory["peak"] for c in g.classes)
            tried.append((mbs, p))
            if p <= limit:
                return f"microbatches {mbs} would need {human_bytes(p)} per device"
    biggest = max(cls.buffers, key=lambda b: b.bytes, default=None)
    what = ""
    if biggest is not None and biggest.bytes > cls.memory["weights"]:
        what = (f"the largest buffer is {biggest.name} ({human_bytes(biggest.bytes)}"
                f"{' per layer' if biggest.per_layer else ''}); ")
    return what + ("reduce the batch or sequence per device (more data or sequence "
                   "parallelism, more microbatches), raise tensor parallelism, or compress weights")
