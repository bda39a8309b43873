"""A gpt-fast-style decode peer (issue 15, item 4): the same shapes as planc's one-GPU decode
plans, timed in the same run, so every planc TPOT has a peer ratio and a bandwidth-bound ratio.

The model is written here, not taken from planc or transformers: a Llama-shaped decoder (RMSNorm,
RoPE, grouped-query attention, gated SiLU MLP, untied lm_head, greedy argmax) with seeded random
weights of the exact shapes (the peer measures time, not text). As gpt-fast does it:
- a static KV cache per layer, preallocated for context + generate positions (nn.Module buffers,
  so CUDA graphs may mutate them in place);
- the prompt's prefill once, eagerly (causal SDPA over the prompt; logits of the last position
  only);
- the one-token step under torch.compile(mode="reduce-overhead", fullgraph=True, dynamic=False):
  one CUDA graph per shape. The step attends over the whole static cache with a mask of the valid
  positions (positions <= input_pos), so its shapes never change.
Grouped-query attention without copying K/V per query head: a KV head's G query heads, each one
token long, are folded into SDPA's query-length axis ([B, kv_heads, G, D] against the cache's
[B, kv_heads, S, D]), which is exact for a one-token step since every row sees the same keys and
mask.

Reported per shape: TTFT (prefill + first argmax, after one warm-up prefill), TPOT median over
the generated steps (CUDA events per step, after the compile and warm-up steps), and the
bandwidth-bound TPOT: (weight bytes read per step + KV bytes read at the mean position) / HBM
rate. The weight bytes read are every parameter but the embedding table, plus the batch's
embedding rows (a step gathers B rows; the table itself is never read whole).

    python benchmarks/decode_peer.py --out peer.json [--hbm 4.8e12] [--shapes llama3_8b,seed]
    python benchmarks/decode_peer.py --small --out /tmp/peer.json   # CPU, eager, tiny shapes
`torchrun --nproc-per-node 1 benchmarks/peers.py --modes decode_peer` runs the same (rank 0).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    batch: int
    context: int
    generate: int
    rope_theta: float = 500000.0


LLAMA3_8B = Shape("llama3_8b", 32, 4096, 32, 8, 128, 14336, 128256, 1, 2048, 32)
# benchmarks/plans/gpu1_decode_single.plan: the seed model's layer dims, 2 layers, batch 8
SEED = Shape("seed_decode_single", 2, 4096, 32, 32, 128, 16384, 32000, 8, 2048, 64, 10000.0)
TINY = Shape("tiny", 2, 64, 4, 2, 16, 128, 256, 2, 12, 6, 10000.0)

# (shape, batches): the shapes of the one-GPU decode plans (gpu1_decode_llama3_8b_b*.plan and
# gpu1_decode_single.plan); batch 64 first, the target, in case a run is cut short
SHAPES = {"llama3_8b": (LLAMA3_8B, (64, 8, 1)), "seed": (SEED, (8,)), "tiny": (TINY, (2,))}


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, heads, D], cos/sin [T, D/2]: the half-split rotation (Hugging Face's Llama)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


class Layer(nn.Module):
    def __init__(self, sh: Shape, max_seq: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        q, kv = sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim
        kw = {"dtype": dtype, "device": device}
        # fused q/k/v and gate/up products: one weight read each, as gpt-fast's wqkv
        self.wqkv = nn.Parameter(torch.empty(q + 2 * kv, sh.hidden, **kw), requires_grad=False)
        self.wo = nn.Parameter(torch.empty(sh.hidden, q, **kw), requires_grad=False)
        self.w13 = nn.Parameter(torch.empty(2 * sh.ffn, sh.hidden, **kw), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(sh.hidden, sh.ffn, **kw), requires_grad=False)
        self.attn_norm = nn.Parameter(torch.empty(sh.hidden, **kw), requires_grad=False)
        self.mlp_norm = nn.Parameter(torch.empty(sh.hidden, **kw), requires_grad=False)
        cache = (sh.batch, sh.kv_heads, max_seq, sh.head_dim)
        self.register_buffer("k_cache", torch.zeros(cache, **kw), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache, **kw), persistent=False)
        self.sh = sh

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):  # type: ignore[no-untyped-def]
        sh = self.sh
        b, t, _ = x.shape
        qkv = rms_norm(x, self.attn_norm) @ self.wqkv.t()
        q, k, v = qkv.split([sh.heads * sh.head_dim] + [sh.kv_heads * sh.head_dim] * 2, -1)
        q = rope(q.view(b, t, sh.heads, sh.head_dim), cos, sin)
        k = rope(k.view(b, t, sh.kv_heads, sh.head_dim), cos, sin)
        return q, k, v.view(b, t, sh.kv_heads, sh.head_dim)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        g, u = (rms_norm(x, self.mlp_norm) @ self.w13.t()).chunk(2, dim=-1)
        return x + (F.silu(g) * u) @ self.w2.t()

    def prefill(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        sh = self.sh
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        self.k_cache[:, :, :t] = k
        self.v_cache[:, :, :t] = v
        g = sh.heads // sh.kv_heads
        # a one-off: K/V repeated per query head for the causal kernel (prefill is not timed
        # against the floor)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(g, 1),
                                           v.repeat_interleave(g, 1), is_causal=True)
        x = x + o.transpose(1, 2).reshape(b, t, -1) @ self.wo.t()
        return self._mlp(x)

    def step(self, x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
        """x [B, 1, hidden]; pos [1] the position written; mask [1, 1, 1, max_seq] valid keys."""
        sh = self.sh
        b = x.shape[0]
        q, k, v = self._qkv(x, cos, sin)
        self.k_cache.index_copy_(2, pos, k.transpose(1, 2))
        self.v_cache.index_copy_(2, pos, v.transpose(1, 2))
        # query head h reads KV head h // G (Hugging Face's repeat_kv order): fold the G heads of
        # one KV head into the query-length axis, so K/V are read once and never copied
        q = q.view(b, sh.kv_heads, sh.heads // sh.kv_heads, sh.head_dim)
        o = F.scaled_dot_product_attention(q, self.k_cache, self.v_cache, attn_mask=mask)
        x = x + o.reshape(b, 1, -1) @ self.wo.t()
        return self._mlp(x)


class Decoder(nn.Module):
    def __init__(self, sh: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0) -> None:
        super().__init__()
        # pad the cache so the mask's rows stay aligned for the fused attention kernels
        self.max_seq = -(-(sh.context + sh.generate) // 64) * 64
        kw = {"dtype": dtype, "device": device}
        self.embed = nn.Parameter(torch.empty(sh.vocab, sh.hidden, **kw), requires_grad=False)
        self.layers = nn.ModuleList(Layer(sh, self.max_seq, dtype, device)
                                    for _ in range(sh.layers))
        self.norm = nn.Parameter(torch.empty(sh.hidden, **kw), requires_grad=False)
        self.lm_head = nn.Parameter(torch.empty(sh.vocab, sh.hidden, **kw), requires_grad=False)
        inv = 1.0 / sh.rope_theta ** (torch.arange(0, sh.head_dim, 2, device=device).float()
                                      / sh.head_dim)
        ang = torch.outer(torch.arange(self.max_seq, device=device).float(), inv)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)
        self.register_buffer("arange", torch.arange(self.max_seq, device=device),
                             persistent=False)
        self.sh = sh
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:  # norms near one, not exactly: a misplaced norm shows
                    p.uniform_(0.5, 1.5, generator=gen)
                else:  # 1/sqrt(fan_in) keeps activations O(1) through every layer
                    std = 1.0 if name == "embed" else p.shape[1] ** -0.5
                    p.normal_(0.0, std, generator=gen)

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T]: fills cache positions 0..T-1; the next token [B, 1]."""
        t = tokens.shape[1]
        x = self.embed[tokens]
        for layer in self.layers:
            x = layer.prefill(x, self.cos[:t], self.sin[:t])
        return self._next(x[:, -1:])

    def step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """token [B, 1] at position pos [1] (a device tensor: the graph stays static)."""
        x = self.embed[token]
        cos, sin = self.cos[pos], self.sin[pos]
        mask = (self.arange <= pos)[None, None, None, :]
        for layer in self.layers:
            x = layer.step(x, pos, cos, sin, mask)
        return self._next(x)

    def _next(self, x: torch.Tensor) -> torch.Tensor:
        return (rms_norm(x, self.norm) @ self.lm_head.t()).argmax(-1)

    def weight_bytes(self) -> tuple[int, int]:
        """(every parameter, what a step reads: all but the embedding table, plus B rows)."""
        total = sum(p.numel() * p.element_size() for p in self.parameters())
        e = self.embed
        return total, total - e.numel() * e.element_size() + self.sh.batch * self.sh.hidden * \
            e.element_size()


def kv_bytes_mean(sh: Shape, elt: int) -> float:
    """KV bytes a decode step reads at the mean position of the timed steps: the step writing
    position p reads positions 0..p; the timed steps write context .. context+generate-2."""
    steps = max(1, sh.generate - 1)
    mean_read = sh.context + (steps - 1) / 2 + 1
    return sh.layers * 2 * sh.batch * sh.kv_heads * sh.head_dim * elt * mean_read


def _timer(dev: torch.device):  # type: ignore[no-untyped-def]
    """A mark() returning an object and elapsed(a, b) seconds: CUDA events, or the host clock."""
    if dev.type == "cuda":
        def mark():  # type: ignore[no-untyped-def]
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return mark, lambda a, b: a.elapsed_time(b) / 1e3
    return time.perf_counter, lambda a, b: b - a


def _cudagraph_skips() -> int:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["inductor"].get("cudagraph_skips", 0))


def run_shape(sh: Shape, dev: torch.device, dtype: torch.dtype, hbm: float, compile_step: bool,
              warmup_steps: int = 3, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = Decoder(sh, dtype, dev, seed)
    gen = torch.Generator(device=dev).manual_seed(seed + 1)
    prompt = torch.randint(0, sh.vocab, (sh.batch, sh.context), device=dev, generator=gen)
    mark, elapsed = _timer(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    step = model.step
    compile_s, skips_before = 0.0, 0
    if compile_step:
        # the caches are mutated inside the graph: static addresses let CUDA graphs keep them
        # in place (no copy in, no "mutated inputs" skip), as gpt-fast's module buffers are
        for layer in model.layers:
            torch._dynamo.mark_static_address(layer.k_cache)
            torch._dynamo.mark_static_address(layer.v_cache)
        step = torch.compile(model.step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        skips_before = _cudagraph_skips()

    def call(tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if compile_step:  # each call is a new step: its outputs may be overwritten by the next
            torch.compiler.cudagraph_mark_step_begin()
        return step(tok, pos).clone()

    with torch.no_grad():
        model.prefill(prompt)  # warm-up (kernels, allocator); writes the same cache again below
        sync()
        a = mark()
        first = model.prefill(prompt)
        b = mark()
        sync()
        ttft = elapsed(a, b)
        pos = torch.tensor([sh.context], device=dev)
        # compile and warm-up steps: they write cache positions >= context, which the timed
        # steps overwrite before any step reads them (the mask exposes only positions <= pos)
        t0 = time.perf_counter()
        tok = first
        for i in range(warmup_steps):
            tok = call(tok, pos + i)
        sync()
        compile_s = time.perf_counter() - t0
        tok, tokens, marks = first, [first], [mark()]
        t0 = time.perf_counter()
        for i in range(sh.generate - 1):
            pos.fill_(sh.context + i)
            tok = call(tok, pos)
            tokens.append(tok)
            marks.append(mark())
        sync()
        wall = time.perf_counter() - t0
    # a step that CUDA graphs skipped runs as compiled kernels launched one by one: say so
    skips = _cudagraph_skips() - skips_before if compile_step else None
    steps = [elapsed(x, y) for x, y in itertools.pairwise(marks)]
    tpot = statistics.median(steps)
    elt = torch.finfo(dtype).bits // 8
    total_w, read_w = model.weight_bytes()
    kv = kv_bytes_mean(sh, elt)
    floor = (read_w + kv) / hbm
    out = {**asdict(sh), "dtype": str(dtype).removeprefix("torch."), "device": str(dev),
           "compiled": compile_step, "cudagraph_skips": skips, "max_seq": model.max_seq,
           "attention": "SDPA over the whole static cache, mask of valid positions, GQA "
                        "folded into the query axis",
           "ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3, "tpot_wall_ms": wall / len(steps) * 1e3,
           "step_ms": [s * 1e3 for s in steps], "compile_and_warmup_s": compile_s,
           "weight_bytes": total_w, "weight_bytes_read": read_w, "kv_bytes_mean": kv,
           "hbm_bytes_per_s": hbm, "floor_tpot_ms": floor * 1e3,
           "floor_over_measured": floor / tpot,
           "tokens": torch.cat(tokens, dim=1).tolist()}
    return out


def run(shapes: list[str], batches: list[int] | None, dev: torch.device, dtype: torch.dtype,
        hbm: float, compile_step: bool, out: Path | None = None) -> dict:
    """Every shape at each batch; with out, the report is rewritten after each shape, so a run
    cut short by its time limit keeps the shapes it finished."""
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__}
    rep = {"peer": "gpt-fast-style decode: static KV cache, prefill once, the one-token step "
                   "under torch.compile(mode='reduce-overhead')", **info, "rows": []}
    for name in shapes:
        base, default_batches = SHAPES[name]
        for b in batches or default_batches:
            t = time.time()
            try:
                row = run_shape(replace(base, batch=b), dev, dtype, hbm, compile_step)
                msg = (f"TTFT {row['ttft_ms']:.1f} ms, TPOT {row['tpot_ms']:.3f} ms, floor "
                       f"{row['floor_tpot_ms']:.3f} ms ({row['floor_over_measured']:.2f}), "
                       f"cudagraph skips {row['cudagraph_skips']}")
            except Exception as e:  # noqa: BLE001 (one shape's failure must not lose the rest)
                row = {"name": base.name, "batch": b, "error": f"{type(e).__name__}: {e}"[:2000]}
                msg = row["error"][:300]
            rep["rows"].append(row)
            # the model, its cache and the graph pool go before the next shape is built
            gc.collect()
            torch._dynamo.reset()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            print(f"decode_peer {base.name} b{b}: {msg}, {time.time() - t:.0f} s",
                  file=sys.stderr, flush=True)
            if out is not None:
                out.write_text(json.dumps(rep, indent=1))
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--small", action="store_true", help="tiny shapes, CPU, eager, float32")
    ap.add_argument("--shapes", default="llama3_8b,seed", help=f"of {sorted(SHAPES)}")
    ap.add_argument("--batches", help="comma-separated; default: each shape's plan batches")
    ap.add_argument("--hbm", type=float, default=4.8e12, help="HBM bytes/s for the floor")
    ap.add_argument("--eager", action="store_true", help="do not compile the step")
    ap.add_argument("--tune", action="store_true",
                    help="inductor's coordinate-descent tuning, as gpt-fast sets it (longer "
                         "compiles; off by default to keep the run within the device limit)")
    a = ap.parse_args()
    cuda = torch.cuda.is_available() and not a.small
    if a.tune:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
    dev = torch.device("cuda" if cuda else "cpu")
    shapes = ["tiny"] if a.small else a.shapes.split(",")
    batches = [int(b) for b in a.batches.split(",")] if a.batches else None
    run(shapes, batches, dev, torch.bfloat16 if cuda else torch.float32, a.hbm,
        cuda and not a.eager, Path(a.out))


if __name__ == "__main__":
    main()
