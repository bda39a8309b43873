"""Mixtral MoE runtime (planc.backends.torch.runtime.moe) against Hugging Face's
MixtralSparseMoeBlock: single process, expert parallel over gloo (ep 2, 4, 8), ep x tp 2x2,
the replicated-token mode, both checkpoint layouts, and the traffic formulas of moe_io."""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist
import torch.multiprocessing as mp

from planc.backends.torch.runtime import moe, moe_io
from planc.layout.moe import expert_range, ffn_range

HIDDEN, FFN, EXPERTS, TOP_K = 32, 64, 16, 2
DEAD = [3, 12, 13, 14, 15]  # layer 1's router never picks these (rank 3 of ep 4 gets no rows)
TOKENS = [24, 17, 0, 30, 24, 9, 24, 19]  # tokens of each slot; slot 2 is a rank with none
# s*: moe.moe_static (a static decode step's block), its ranks holding equal rows
CASES = {4: ["ep4", "ep2", "ep2xtp2", "rep4", "rep2x2", "sep4", "sep2xtp2", "srep4"],
         8: ["ep8"]}


def _slot(case: str, rank: int) -> int:
    """Which token slot a rank holds: its own in ep cases, its ep coordinate's with tp, one
    shared slot when tokens are replicated."""
    return {"ep2xtp2": rank // 2, "rep4": 4, "rep2x2": 5, "sep4": 0, "sep2xtp2": 0,
            "srep4": 4}.get(case, rank)


def _ep_group(case: str, rank: int) -> int:
    """Index of a rank's ep group (ep2: {0,1} and {2,3}; ep2xtp2: {0,2} and {1,3})."""
    return {"ep2": rank // 2, "ep2xtp2": rank % 2, "sep2xtp2": rank % 2}.get(case, 0)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


# --- the reference (parent process only: children never import transformers) ----------------


def _make_reference(tmp: Path) -> dict:
    from safetensors.torch import save_file
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=EXPERTS,
        num_experts_per_tok=TOP_K,
        vocab_size=32,
        experts_implementation="eager",
    )
    torch.manual_seed(0)
    model = MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            # Router logits of O(1) spread: no near-ties in top-k between differently
            # blocked matmuls; experts of O(1) output.
            layer.mlp.gate.weight.normal_(0, 0.5)
            layer.mlp.experts.gate_up_proj.normal_(0, 0.3)
            layer.mlp.experts.down_proj.normal_(0, 0.3)
        gate = model.model.layers[1].mlp.gate.weight
        gate[DEAD] = 0.0
        gate[DEAD, 0] = -20.0  # logit <= -20 since every token has x[0] >= 1
    model.save_pretrained(tmp / "legacy")
    fused = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(fused, str(tmp / "fused.safetensors"))

    xs = [torch.randn(n, HIDDEN) for n in TOKENS]
    for x in xs:
        x[:, 0] = x[:, 0].abs() + 1.0
    cat = torch.cat(xs)
    refs = []
    with torch.no_grad():
        for layer in model.model.layers:
            refs.append(list(layer.mlp(cat.unsqueeze(0))[0].split(TOKENS)))
        chosen = model.model.layers[1].mlp.gate(cat)[2]
    assert not torch.isin(chosen, torch.tensor(DEAD)).any()  # the zero-token case is real
    torch.save({"tokens": xs}, tmp / "inputs.pt")
    return {
        "model": model,
        "xs": xs,
        "refs": refs,
        "legacy": str(tmp / "legacy" / "model.safetensors"),
        "fused": str(tmp / "fused.safetensors"),
    }


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _make_reference(tmp_path_factory.mktemp("moe"))


# --- worker ------------------------------------------------------------------------------------


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        xs = torch.load(Path(tmp) / "inputs.pt")["tokens"]
        legacy = str(Path(tmp) / "legacy" / "model.safetensors")
        fused = str(Path(tmp) / "fused.safetensors")
        # Every rank creates every group, in the same order.
        pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])] if world == 4 else []
        cross = [dist.new_group([0, 2]), dist.new_group([1, 3])] if world == 4 else []
        results: dict[str, tuple[torch.Tensor, dict]] = {}
        for case in CASES[world]:
            e, t = rank // 2, rank % 2
            for layer in (0, 1):
                x = xs[_slot(case, rank)]
                router = moe.load_router(legacy, layer)
                stats: dict = {}
                if case in ("ep4", "ep8"):
                    ex = moe.load_experts(legacy, layer, experts=EXPERTS, ep=world, ep_rank=rank)
                    out = moe.moe_ep(x, router, ex, TOP_K, None, stats=stats)
                elif case == "ep2":
                    ex = moe.load_experts(legacy, layer, experts=EXPERTS, ep=2, ep_rank=t)
                    out = moe.moe_ep(x, router, ex, TOP_K, pairs[e], stats=stats)
                elif case == "ep2xtp2":  # mesh (ep=2, tp=2): rank = 2*e + t
                    ex = moe.load_experts(
                        fused, layer, experts=EXPERTS, ep=2, ep_rank=e, tp=2, tp_rank=t
                    )
                    out = moe.moe_ep(x, router, ex, TOP_K, cross[t], pairs[e], stats=stats)
                elif case == "rep4":
                    ex = moe.load_experts(legacy, layer, experts=EXPERTS, ep=4, ep_rank=rank)
                    out = moe.moe_replicated(x, router, ex, TOP_K, None)
                elif case == "sep4":  # experts one by one (unstacked, as compressed ones)
                    ex = moe.load_experts(legacy, layer, experts=EXPERTS, ep=4, ep_rank=rank)
                    out = moe.moe_static(x, router, ex, TOP_K, "all_to_all", dist.group.WORLD,
                                         stats=stats)
                elif case == "sep2xtp2":  # stacked: batched GEMMs over the local experts
                    ex = moe.stack_experts(moe.load_experts(
                        fused, layer, experts=EXPERTS, ep=2, ep_rank=e, tp=2, tp_rank=t
                    ))
                    out = moe.moe_static(x, router, ex, TOP_K, "all_to_all", cross[t], pairs[e],
                                         stats=stats)
                elif case == "srep4":
                    ex = moe.stack_experts(
                        moe.load_experts(legacy, layer, experts=EXPERTS, ep=4, ep_rank=rank))
                    out = moe.moe_static(x, router, ex, TOP_K, "replicated", None)
                else:  # rep2x2: 8 experts per expert group, ffn halves inside it
                    ex = moe.load_experts(
                        legacy, layer, experts=EXPERTS, ep=2, ep_rank=e, tp=2, tp_rank=t
                    )
                    out = moe.moe_replicated(x, router, ex, TOP_K, None)
                results[f"{case}/{layer}"] = (out, stats)
        torch.save(results, Path(tmp) / f"out{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, tmp: str, timeout: float = 150.0) -> list[dict]:
    ctx = mp.start_processes(
        _worker, args=(world, _free_port(), tmp), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):  # raises if a rank failed (and ends the others)
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"world {world} did not finish in {timeout} s")
    return [torch.load(Path(tmp) / f"out{r}.pt") for r in range(world)]


def _check_world(ref: dict, world: int) -> None:
    tmp = str(Path(ref["legacy"]).parent.parent)
    outs = _spawn(world, tmp)
    for case in CASES[world]:
        for layer in (0, 1):
            got = [outs[r][f"{case}/{layer}"][0] for r in range(world)]
            want = [ref["refs"][layer][_slot(case, r)] for r in range(world)]
            for g, w in zip(got, want):
                assert g.shape == w.shape
            err = _rel(torch.cat(got), torch.cat(want))
            assert err <= 1e-4, f"{case} layer {layer}: rel error {err}"
            if case.startswith("ep"):
                _check_traffic(case, layer, [outs[r][f"{case}/{layer}"][1] for r in range(world)])
            if case.startswith("sep"):
                _check_static_traffic(case, [outs[r][f"{case}/{layer}"][1] for r in range(world)])


def _check_traffic(case: str, layer: int, stats: list[dict]) -> None:
    """Bytes sent per rank equal moe_io's formulas; combine returns what was dispatched."""
    ep = {"ep2": 2, "ep2xtp2": 2}.get(case, len(stats))
    tp = 2 if case == "ep2xtp2" else 1
    for rank, s in enumerate(stats):
        peers = [r for r in range(len(stats)) if _ep_group(case, r) == _ep_group(case, rank)]
        formula = moe_io.ep_traffic(
            TOKENS[_slot(case, rank)],
            HIDDEN,
            TOP_K,
            experts=EXPERTS,
            ep=ep,
            dtype_bytes=4,
            tp=tp,
            group_tokens=sum(TOKENS[_slot(case, r)] for r in peers),
        )
        assert s["counts"] == formula.counts
        assert s["dispatch"] == formula.dispatch
        assert s["tp"] == formula.tp_allreduce_payload
        assert s["combine"] <= formula.combine_max
    assert sum(s["combine"] for s in stats) == sum(s["dispatch"] for s in stats)
    if case == "ep4" and layer == 1:
        assert stats[3]["combine"] == 0  # rank 3's experts (12..15) got no tokens at all


def _check_static_traffic(case: str, stats: list[dict]) -> None:
    """What moe_static's collectives carried per rank equals the message sizes the compiler
    prices a static decode step's block with (cost/memory.MESSAGE_BYTES, the keys of the
    expert strategy's step records)."""
    from planc.cost.memory import MESSAGE_BYTES, LocalDims

    ep = 2 if case == "sep2xtp2" else 4
    tokens = TOKENS[_slot(case, 0)]
    d = LocalDims(tokens=tokens, mb=tokens, seq_q=1, seq_kv=1, hidden=HIDDEN, heads=4,
                  kv_heads=2, head_dim=8, ffn=FFN, experts=EXPERTS // ep, top_k=TOP_K, elem=4,
                  experts_total=EXPERTS, static_moe_rows=tokens * ep)
    for s in stats:
        assert s["gather_rows"] == MESSAGE_BYTES["residual"](d)
        assert s["gather_gates"] == MESSAGE_BYTES["dense_gates"](d)
        assert s["partials"] == MESSAGE_BYTES["static_moe_partials"](d)
        assert s["tp"] == (MESSAGE_BYTES["residual"](d) if case == "sep2xtp2" else 0)


def test_moe_static_of_all_experts_equals_the_routed_block_and_hf(
    ref: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A static decode step's block with every expert on the rank (no collective): the dense
    gates and every expert over every row give the routed block's output to float32 rounding
    (a zero gate adds an exact zero; what differs is a GEMM's rounding over more rows), and
    HF's block's."""
    x = torch.cat(ref["xs"])
    for layer in (0, 1):
        ex = moe.load_experts(ref["legacy"], layer, experts=EXPERTS)
        router = moe.load_router(ref["legacy"], layer)
        out = moe.moe_static(x, router, ex, TOP_K, "local", None)
        assert _rel(out, moe.moe_local(x, router, ex, TOP_K)) <= 1e-6
        assert _rel(out, torch.cat(ref["refs"][layer])) <= 1e-4
        # the batched GEMMs over stacked weights, and the routed block over their views, in
        # both weight layouts (in_major is what a GPU keeps: each expert's [in, out] in memory)
        for layout in ("out_major", "in_major"):
            monkeypatch.setenv("PLANC_WEIGHT_LAYOUT", layout)
            stacked = moe.stack_experts(ex)
            assert stacked.gate_up is not None and stacked.count == EXPERTS
            assert stacked.gate_up.mT.is_contiguous() == (layout == "in_major")
            batched = moe.moe_static(x, router, stacked, TOP_K, "local", None)
            assert _rel(batched, out) <= 1e-6
            assert _rel(moe.moe_local(x, router, stacked, TOP_K), out) <= 1e-6


# --- tests -------------------------------------------------------------------------------------


def test_moe_local_equals_hf_block_with_and_without_dead_experts(ref: dict) -> None:
    x = torch.cat(ref["xs"])
    for layer in (0, 1):
        ex = moe.load_experts(ref["legacy"], layer, experts=EXPERTS)
        out = moe.moe_local(x, moe.load_router(ref["legacy"], layer), ex, TOP_K)
        assert _rel(out, torch.cat(ref["refs"][layer])) <= 1e-4


def test_route_matches_hf_router(ref: dict) -> None:
    x = torch.cat(ref["xs"])
    gate = ref["model"].model.layers[0].mlp.gate
    _, hf_w, hf_idx = gate(x)
    w, idx = moe.route(x, gate.weight, TOP_K)
    assert torch.equal(idx, hf_idx)
    assert w.dtype == torch.float32 and torch.allclose(w, hf_w, rtol=1e-6, atol=0)


def test_load_experts_reads_legacy_and_fused_layouts_alike_and_slices_ffn(ref: dict) -> None:
    experts = ref["model"].model.layers[1].mlp.experts
    for ep, ep_rank, tp, tp_rank in [(4, 1, 2, 1), (2, 0, 1, 0), (8, 7, 4, 2)]:
        a = moe.load_experts(
            ref["legacy"], 1, experts=EXPERTS, ep=ep, ep_rank=ep_rank, tp=tp, tp_rank=tp_rank
        )
        b = moe.load_experts(
            ref["fused"], 1, experts=EXPERTS, ep=ep, ep_rank=ep_rank, tp=tp, tp_rank=tp_rank
        )
        first, last = expert_range(EXPERTS, ep, ep_rank)
        lo, hi = ffn_range(FFN, tp, tp_rank)
        assert a.first == b.first == first and a.count == b.count == last - first
        for i, e in enumerate(range(first, last)):
            gate_up, down = experts.gate_up_proj[e].detach(), experts.down_proj[e].detach()
            for w in (a, b):
                assert torch.equal(w.gate[i], gate_up[lo:hi])
                assert torch.equal(w.up[i], gate_up[FFN + lo : FFN + hi])
                assert torch.equal(w.down[i], down[:, lo:hi])


def test_compressed_experts_equal_their_dense_equivalent(ref: dict) -> None:
    x = torch.cat(ref["xs"])
    router = moe.load_router(ref["legacy"], 0)
    ex = moe.load_experts(ref["legacy"], 0, experts=EXPERTS)
    packed = moe.compress_experts(ex, int8=True, sparse_2_4=True)
    dense = moe.ExpertWeights(
        0, *([lin.dense_weight() for lin in ws] for ws in (packed.gate, packed.up, packed.down))
    )
    out = moe.moe_local(x, router, packed, TOP_K)
    assert _rel(out, moe.moe_local(x, router, dense, TOP_K)) <= 1e-5
    assert _rel(out, torch.cat(ref["refs"][0])) > 1e-3  # compression did change the weights


@pytest.mark.distributed
def test_ep4_ep2_ep2xtp2_and_replicated_equal_hf_over_4_gloo_ranks(ref: dict) -> None:
    _check_world(ref, 4)


@pytest.mark.distributed
@pytest.mark.slow  # 8 processes importing torch: ~20 s on 2 cores
def test_ep8_equals_hf_over_8_gloo_ranks(ref: dict) -> None:
    _check_world(ref, 8)
