"""Hand-written peers, timed in the same run as planc's programs (torchrun, one process a GPU).

  dtensor_tp  torch DTensor tensor parallel (`parallelize_module`, ColwiseParallel /
              RowwiseParallel) on the same Hugging Face Llama layers and input as planc's TP plan
  ring        planc's ring attention kernel on zig-zag chunks against the ideal: one GPU's causal
              SDPA time over the whole sequence divided by the ring size
  ring64k     the same at 64k tokens
  a2a         all_to_all_single at the byte sizes of planc's expert dispatch and combine
              (tokens x top_k x hidden), as GB/s per GPU
  eager_op    the time of one small eager op (launch + dispatch)
  l2_weights  rank 0 alone: a decode layer's four weight products (qkv, o, gate_up, down; batch
              8, bf16) over weight sets from 19 MB to 537 MB, repeated back to back, in a CUDA
              graph and eagerly: weight bytes per second, to see whether a set that fits the
              60 MB L2 is read faster than HBM allows (what `fit cache` bets on)
  lse_kernels rank 0 alone: each CUDA block kernel of ring attention (cuDNN, flash, efficient)
              against the explicit float32 kernel (max error of out and lse: GQA, causal
              diagonal blocks, sq != sk) and timed on an 8k causal block against SDPA
  decode_peer rank 0 alone: a gpt-fast-style decode (static KV cache, the one-token step under
              torch.compile reduce-overhead) on the one-GPU decode plans' shapes, with TTFT,
              TPOT and the bandwidth floor (benchmarks/decode_peer.py, which also runs alone)

    torchrun --nproc-per-node 2 benchmarks/peers.py --out peers.json [--small]
Median of repeats with CUDA events after warm-up; the slowest rank's time. --small runs tiny
sizes on CPU/gloo (a smoke test of this script, not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import decode_peer

from planc.backends.torch.runtime.ring_attention import (  # noqa: E402
    attention_block,
    explicit_attention_with_lse,
    ring_attention,
    zigzag_shard,
)


def timeit(fn, dev: torch.device, warmup: int, repeats: int, collective: bool = True) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of fn; with collective, the slowest rank's (every rank must call)."""
    collective = collective and dist.is_initialized()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if collective:
            dist.barrier()
        if dev.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    med = torch.tensor([statistics.median(times)], dtype=torch.float64, device=dev)
    if collective:
        dist.all_reduce(med, op=dist.ReduceOp.MAX)
    return float(med.item())


def dtensor_tp(dev, dtype, world, small, warmup, repeats) -> dict:  # type: ignore[no-untyped-def]
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaDecoderLayer,
        LlamaRMSNorm,
        LlamaRotaryEmbedding,
    )

    h, heads, ffn, layers, seq = (64, 8, 128, 2, 64) if small else (4096, 32, 16384, 2, 32768)
    cfg = LlamaConfig(hidden_size=h, num_attention_heads=heads, num_key_value_heads=heads,
                      head_dim=h // heads, intermediate_size=ffn, num_hidden_layers=layers,
                      attn_implementation="sdpa")
    torch.manual_seed(0)
    mesh = init_device_mesh(dev.type, (world,))
    blocks = torch.nn.ModuleList([LlamaDecoderLayer(cfg, i) for i in range(layers)])
    norm = LlamaRMSNorm(h)
    rope = LlamaRotaryEmbedding(cfg)
    blocks.to(dev, dtype)
    norm.to(dev, dtype)
    rope.to(dev)
    plan = {"self_attn.q_proj": ColwiseParallel(), "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(), "self_attn.o_proj": RowwiseParallel(),
            "mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel()}
    for b in blocks:
        parallelize_module(b, mesh, plan)
    x = torch.randn(1, seq, h, device=dev, dtype=dtype)
    pos = torch.arange(seq, device=dev)[None]

    @torch.inference_mode()
    def fwd() -> None:
        y = x
        pe = rope(y, pos)
        for b in blocks:
            out = b(y, position_embeddings=pe, attention_mask=None, position_ids=pos)
            y = out[0] if isinstance(out, tuple) else out
        norm(y)

    t = timeit(fwd, dev, warmup, repeats)
    return {"peer": "torch DTensor parallelize_module (Colwise/Rowwise)", "layers": layers,
            "seq": seq, "time_s": t, "tokens_per_s": seq / t}


def ring(dev, dtype, world, rank, small, warmup, repeats, seq=32768) -> dict:  # type: ignore[no-untyped-def]
    heads, d, seq = (4, 16, 256) if small else (32, 128, seq)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, seq, d, device=dev, dtype=dtype) for _ in range(3))
    single = None
    # one GPU's time, taken on rank 0 alone (no barrier: the other ranks are not in it)
    if rank == 0:
        f = torch.nn.functional.scaled_dot_product_attention
        for _ in range(warmup):
            f(q, k, v, is_causal=True)
        ts = []
        for _ in range(repeats):
            if dev.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                f(q, k, v, is_causal=True)
                e.record()
                e.synchronize()
                ts.append(s.elapsed_time(e) / 1e3)
            else:
                t0 = time.perf_counter()
                f(q, k, v, is_causal=True)
                ts.append(time.perf_counter() - t0)
        single = statistics.median(ts)
    lq, lk, lv = (zigzag_shard(t, rank, world, 2).contiguous() for t in (q, k, v))
    t_ring = timeit(lambda: ring_attention(lq, lk, lv, None, causal=True, zigzag=True), dev,
                    warmup, repeats)
    box = [single]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    single = box[0]
    ideal = single / world
    out = {"peer": "ideal ring: one GPU's causal SDPA / ring size", "seq": seq, "heads": heads,
           "single_gpu_sdpa_s": single, "ring_s": t_ring, "ideal_s": ideal,
           "efficiency": ideal / t_ring}
    if os.environ.get("PLANC_PEERS_PROFILE"):  # where a ring call's time goes, on rank 0
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(3):
                ring_attention(lq, lk, lv, None, causal=True, zigzag=True)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        out["profile_rank0"] = prof.key_averages().table(sort_by=key, row_limit=14)
    return out


def lse_kernels(dev, dtype, small, warmup, repeats) -> dict:  # type: ignore[no-untyped-def]
    """Each block kernel against the explicit float32 one, then timed on one causal block."""
    names = ("cudnn", "flash", "efficient") if dev.type == "cuda" else ("cpu_flash",)
    torch.manual_seed(0)
    cases = [  # (heads, kv_heads, sq, sk, causal)
        (8, 2, 256, 256, True), (8, 8, 128, 256, False), (8, 8, 256, 128, False),
        (32, 32, 512, 512, True),
    ]
    d = 16 if small else 128
    out: dict = {"errors": {}, "times_s": {}}
    for name in names:
        worst_o = worst_l = 0.0
        for h, kv, sq, sk, causal in cases:
            q = torch.randn(1, h, sq, d, device=dev, dtype=dtype)
            k, v = (torch.randn(1, kv, sk, d, device=dev, dtype=dtype) for _ in range(2))
            o, lse = attention_block(q, k, v, causal=causal, scale=d**-0.5, backend=name)
            rk, rv = (t.repeat_interleave(h // kv, dim=1) for t in (k, v))
            ro, rl = explicit_attention_with_lse(q, rk, rv, causal, d**-0.5)
            worst_o = max(worst_o, float((o.float() - ro).abs().max()))
            worst_l = max(worst_l, float(((lse - rl).abs() / rl.abs().clamp_min(1)).max()))
        out["errors"][name] = {"out_max_abs": worst_o, "lse_max_rel": worst_l}
    s = 256 if small else 8192
    q, k, v = (torch.randn(1, 32, s, d, device=dev, dtype=dtype) for _ in range(3))
    f = torch.nn.functional.scaled_dot_product_attention
    for name, fn in [("sdpa", lambda: f(q, k, v, is_causal=True))] + [
        (n, lambda n=n: attention_block(q, k, v, causal=True, scale=d**-0.5, backend=n))
        for n in names
    ]:
        out["times_s"][name] = timeit(fn, dev, warmup, repeats, collective=False)
    out["block"] = f"[1, 32, {s}, {d}] causal, {dtype}"
    return out


def l2_weights(dev, dtype, small, warmup, repeats) -> dict:  # type: ignore[no-untyped-def]
    """Weight bytes read per second by a decode layer's products, graph-replayed and eager."""
    hiddens = (64, 128) if small else (768, 1024, 1280, 1536, 2048, 4096)
    iters = 4 if small else 50
    rows = []
    for h in hiddens:
        torch.manual_seed(0)
        shapes = [(3 * h, h), (h, h), (8 * h, h), (h, 4 * h)]  # qkv, o, gate_up, down
        ws = [torch.randn(o, i, device=dev, dtype=dtype) for o, i in shapes]
        xs = {i: torch.randn(8, i, device=dev, dtype=dtype) for _, i in shapes}
        outs = [torch.empty(8, o, device=dev, dtype=dtype) for o, _ in shapes]
        nbytes = sum(w.numel() * w.element_size() for w in ws)

        def layer_loop() -> None:
            for _ in range(iters):
                for w, y in zip(ws, outs):
                    torch.matmul(xs[w.shape[1]], w.t(), out=y)

        row = {"hidden": h, "weight_bytes": nbytes, "iters": iters,
               "eager_s": timeit(layer_loop, dev, warmup, repeats, collective=False) / iters}
        if dev.type == "cuda":
            layer_loop()  # warm cuBLAS before capture
            torch.cuda.synchronize(dev)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                layer_loop()
            row["graph_s"] = timeit(graph.replay, dev, warmup, repeats, collective=False) / iters
        for k in ("eager_s", "graph_s"):
            if k in row:
                row[k.replace("_s", "_gb_per_s")] = nbytes / row[k] / 1e9
        rows.append(row)
        del ws, xs, outs
    return {"peer": "a decode layer's weight products, batch 8", "rows": rows}


def a2a(dev, dtype, world, small, warmup, repeats) -> dict:  # type: ignore[no-untyped-def]
    tokens, top_k, h = (64, 2, 32) if small else (8192, 2, 4096)
    n = tokens * top_k * h
    send = torch.randn(n, device=dev, dtype=dtype)
    recv = torch.empty_like(send)

    def both() -> None:
        dist.all_to_all_single(recv, send)  # dispatch
        dist.all_to_all_single(send, recv)  # combine

    t = timeit(both, dev, warmup, repeats)
    nbytes = 2 * n * send.element_size()
    return {"peer": "all_to_all_single at planc's dispatch + combine sizes", "tokens": tokens,
            "top_k": top_k, "bytes_per_gpu": nbytes, "time_s": t,
            "gb_per_s_per_gpu": nbytes / t / 1e9,
            "note": "bytes each GPU sends (dispatch + combine), including its own share"}


def eager_op(dev, dtype, small, warmup, repeats) -> dict:  # type: ignore[no-untyped-def]
    """Time per small eager op (launch + dispatch bound): 200 in-place adds on [128, 1024]."""
    x = torch.randn(128, 1024, device=dev, dtype=dtype)
    n = 200

    def loop() -> None:
        for _ in range(n):
            x.add_(1.0)

    t = timeit(loop, dev, warmup, repeats)
    return {"peer": "eager op overhead", "ops": n, "time_s": t, "per_op_s": t / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--modes", default="dtensor_tp,ring,ring64k,a2a,eager_op,lse_kernels")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--hbm", type=float, default=4.8e12, help="HBM bytes/s (decode_peer floor)")
    a = ap.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    cuda = torch.cuda.is_available() and not a.small
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(dev)
    dtype = torch.bfloat16 if cuda else torch.float32
    out = {"world": world, "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
           "torch": torch.__version__}
    try:
        for mode in a.modes.split(","):
            if mode == "dtensor_tp":
                out[mode] = dtensor_tp(dev, dtype, world, a.small, a.warmup, a.repeats)
            elif mode == "ring":
                out[mode] = ring(dev, dtype, world, rank, a.small, a.warmup, a.repeats)
            elif mode == "ring64k":
                out[mode] = ring(dev, dtype, world, rank, a.small, a.warmup, a.repeats, 65536)
            elif mode == "l2_weights":
                if rank == 0:
                    out[mode] = l2_weights(dev, dtype, a.small, a.warmup, a.repeats)
                dist.barrier()
            elif mode == "lse_kernels":
                if rank == 0:
                    out[mode] = lse_kernels(dev, dtype, a.small, a.warmup, a.repeats)
                dist.barrier()
            elif mode == "decode_peer":
                if rank == 0:
                    out[mode] = decode_peer.run(
                        ["tiny"] if a.small else ["llama3_8b", "seed"], None, dev, dtype,
                        a.hbm, cuda)
                dist.barrier()
            elif mode == "eager_op":
                out[mode] = eager_op(dev, dtype, a.small, a.warmup, a.repeats)
            elif mode == "a2a":
                out[mode] = a2a(dev, dtype, world, a.small, a.warmup, a.repeats)
            if cuda:
                torch.cuda.empty_cache()
        if rank == 0:
            Path(a.out).write_text(json.dumps(out, indent=1))
            print(json.dumps(out, indent=1))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
