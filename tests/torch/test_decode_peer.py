"""benchmarks/decode_peer.py's small mode on CPU: its cached, masked one-token steps give the
tokens of a plain greedy decode that recomputes the whole sequence each step (written here from
the peer's weights, with repeated K/V and causal attention: no cache, no mask, no GQA folding),
and its report has every field the H200 table reads."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.torch.test_bench_tools import tool

ROOT = Path(__file__).resolve().parents[2]

FIELDS = {"name", "batch", "layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab",
          "context", "generate", "ttft_ms", "tpot_ms", "tpot_wall_ms", "step_ms",
          "weight_bytes", "weight_bytes_read", "kv_bytes_mean", "hbm_bytes_per_s",
          "floor_tpot_ms", "floor_over_measured", "tokens", "compiled", "cudagraph_skips"}


def reference_tokens(model, prompt: torch.Tensor, generate: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Greedy argmax of the same weights, the whole sequence recomputed at every step."""
    sh = model.sh
    seq = prompt
    g = sh.heads // sh.kv_heads

    def norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def rot(x: torch.Tensor) -> torch.Tensor:  # x [B, heads, T, D]
        t = x.shape[2]
        inv = 1.0 / sh.rope_theta ** (torch.arange(0, sh.head_dim, 2).float() / sh.head_dim)
        ang = torch.outer(torch.arange(t).float(), inv)
        ang = torch.cat([ang, ang], dim=-1)
        half = torch.cat([-x[..., sh.head_dim // 2:], x[..., :sh.head_dim // 2]], dim=-1)
        return x * ang.cos() + half * ang.sin()

    for _ in range(generate):
        b, t = seq.shape
        x = model.embed[seq]
        for layer in model.layers:
            q_rows = sh.heads * sh.head_dim
            kv_rows = sh.kv_heads * sh.head_dim
            w = layer.wqkv
            h = norm(x, layer.attn_norm)
            q = (h @ w[:q_rows].t()).view(b, t, sh.heads, sh.head_dim).transpose(1, 2)
            k = (h @ w[q_rows:q_rows + kv_rows].t()).view(b, t, sh.kv_heads, sh.head_dim)
            v = (h @ w[q_rows + kv_rows:].t()).view(b, t, sh.kv_heads, sh.head_dim)
            k = rot(k.transpose(1, 2)).repeat_interleave(g, dim=1)
            v = v.transpose(1, 2).repeat_interleave(g, dim=1)
            o = F.scaled_dot_product_attention(rot(q), k, v, is_causal=True)
            x = x + o.transpose(1, 2).reshape(b, t, -1) @ layer.wo.t()
            h = norm(x, layer.mlp_norm)
            gate, up = layer.w13[:sh.ffn], layer.w13[sh.ffn:]
            x = x + (F.silu(h @ gate.t()) * (h @ up.t())) @ layer.w2.t()
        logits = norm(x[:, -1], model.norm) @ model.lm_head.t()
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompt.shape[1]:]


@pytest.mark.parametrize("kv_heads", [2, 4])  # grouped-query and one KV head per query head
def test_the_small_peer_decodes_the_greedy_tokens_of_a_full_recompute(kv_heads):
    peer = tool("decode_peer")
    sh = replace(peer.TINY, kv_heads=kv_heads)
    row = peer.run_shape(sh, torch.device("cpu"), torch.float32, 4.8e12, compile_step=False)
    # run_shape builds the model and prompt from its seeds: build them again for the reference
    torch.manual_seed(0)
    model = peer.Decoder(sh, torch.float32, torch.device("cpu"), 0)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, sh.vocab, (sh.batch, sh.context), generator=gen)
    with torch.no_grad():
        want = reference_tokens(model, prompt, sh.generate)
    got = torch.tensor(row["tokens"])
    assert got.shape == (sh.batch, sh.generate)
    assert torch.equal(got, want), (got, want)
    assert len(set(got.flatten().tolist())) > 2  # not a degenerate model that repeats a token


def test_the_small_peer_reports_every_field(tmp_path):
    out = tmp_path / "peer.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_peer.py"), "--small",
                    "--out", str(out), "--hbm", "2e12"], check=True, cwd=ROOT)
    rep = json.loads(out.read_text())
    (row,) = rep["rows"]
    assert FIELDS <= row.keys(), FIELDS - row.keys()
    assert row["compiled"] is False and row["hbm_bytes_per_s"] == 2e12
    assert len(row["step_ms"]) == row["generate"] - 1 and row["tpot_ms"] > 0
    assert len(row["tokens"]) == row["batch"] and len(row["tokens"][0]) == row["generate"]
    # the floor is the bytes a step reads over the rate: every weight but the embedding table
    # (the batch's rows of it), and the KV cache at the mean position of the timed steps
    elt = 4
    emb = row["vocab"] * row["hidden"] * elt
    assert row["weight_bytes_read"] == row["weight_bytes"] - emb + row["batch"] * row["hidden"] \
        * elt
    mean_read = row["context"] + (row["generate"] - 2) / 2 + 1
    kv = row["layers"] * 2 * row["batch"] * row["kv_heads"] * row["head_dim"] * elt * mean_read
    assert row["kv_bytes_mean"] == pytest.approx(kv)
    floor = (row["weight_bytes_read"] + kv) / 2e12 * 1e3
    assert row["floor_tpot_ms"] == pytest.approx(floor)
    assert row["floor_over_measured"] == pytest.approx(floor / row["tpot_ms"])


def test_the_peer_runs_the_shapes_of_the_plans_it_is_compared_with():
    """decode_h200.py pairs each one-GPU decode plan with a peer shape: the model and workload
    must be the plan's, or the ratios compare different work."""
    peer, h200, bench = tool("decode_peer"), tool("decode_h200"), tool("gpu_bench")
    shapes = {sh.name: (sh, batches) for sh, batches in peer.SHAPES.values()}
    for plan_file, name, batch in h200.PAIRS:
        (plan,) = bench.plans_of(ROOT / "benchmarks" / "plans" / plan_file)
        sh, batches = shapes[name]
        assert batch in batches, (plan_file, batch)
        m, w = plan.model, plan.workload
        got = (m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.ffn, m.vocab,
               w.batch, w.context, w.generate)
        want = (sh.layers, sh.hidden, sh.heads, sh.kv_heads, sh.head_dim, sh.ffn, sh.vocab,
                batch, sh.context, sh.generate)
        assert got == want, plan_file


def test_the_table_pairs_planc_and_the_peer_by_plan_and_batch(tmp_path):
    h200 = tool("decode_h200")
    planc = {"records": [{"plan": "gpu1_decode_llama3_8b_b64.plan:x", "tpot_ms": 10.0,
                          "predicted_tpot_ms": 9.0, "ttft_ms": 3000.0},
                         {"plan": "gpu1_decode_llama3_8b_b8.plan:y", "tpot_ms": 5.0}]}
    peer = {"rows": [{"name": "llama3_8b", "batch": 64, "tpot_ms": 12.5, "floor_tpot_ms": 8.0,
                      "ttft_ms": 2900.0, "hbm_bytes_per_s": 4.8e12},
                     {"name": "llama3_8b", "batch": 8, "tpot_ms": 4.0, "floor_tpot_ms": 3.0}]}
    lines = h200.table(planc, peer)
    b64 = next(ln for ln in lines if ln.startswith("| llama3_8b | 64 "))
    cells = [c.strip() for c in b64.strip("|").split("|")]
    assert cells[2:9] == ["10.000", "9.000", "12.500", "8.000", "1.25", "0.80", "0.64"], cells
    b8 = next(ln for ln in lines if ln.startswith("| llama3_8b | 8 "))
    assert [c.strip() for c in b8.strip("|").split("|")][6] == "0.80"  # planc slower: < 1
    b1 = next(ln for ln in lines if ln.startswith("| llama3_8b | 1 "))
    assert "| - |" in b1  # a shape neither ran shows dashes, not a made-up ratio


def test_the_table_merges_the_planc_files_of_split_commands(tmp_path, monkeypatch):
    """decode_h200.py --only splits the planc part over commands, each writing its own file;
    the table run (no part) reads every h200_decode_planc*.json in --out."""
    h200 = tool("decode_h200")
    for tag, plan, tpot in (("b64_single", "gpu1_decode_llama3_8b_b64.plan:x", 9.0),
                            ("b1_b8", "gpu1_decode_llama3_8b_b1.plan:y", 5.0)):
        (tmp_path / f"h200_decode_planc_{tag}.json").write_text(
            json.dumps({"records": [{"plan": plan, "tpot_ms": tpot}]}))
    monkeypatch.setattr(sys, "argv", ["decode_h200.py", "--out", str(tmp_path), "--parts", ""])
    h200.main()
    table = (tmp_path / "h200_decode_table.md").read_text()
    assert "| llama3_8b | 64 | 9.000 |" in table and "| llama3_8b | 1 | 5.000 |" in table
