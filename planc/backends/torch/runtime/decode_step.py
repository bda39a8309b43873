"""The decode step at static addresses: one CUDA graph per microbatch, replayed once per token.

A decode step (planc/layout/schedule.py: step t >= 1 feeds the token of step t - 1) is the
same work every token: embed the fed tokens, every layer with its KV cache, the final norm,
the lm_head and the greedy choice. Run eagerly, each of its ~900 kernels (385 ops of the cost
model) pays a launch from Python (about 13 ms per token for a Llama-3-8B shape on an H200 whatever the batch, while
the bytes it reads take 3-7 ms: issue 15's baseline). Here everything a step reads or writes
lives at an address fixed for the whole run, and what changes between tokens is data on the
device: the fed token ids, each row's position (RoPE), the cache slot written, how many slots
each row's attention reads. The step advances those counters itself, so on CUDA it is captured
once as a torch.cuda.CUDAGraph and each token is one `replay()`: no launch per kernel and no
host synchronisation per token (only the stop test of real prompts at EOS reads the device).
Collectives of the step's tensor-parallel groups (the o_proj and down all_reduce, a vocab
split's argmax agreement) are captured with it when the group is NCCL's, and so is a pipeline
stage's exchange with its neighbours (`Exchange`): a stage's graph ends by sending its output
(the hidden state on, or from the last stage the chosen tokens back to the first) and
receiving the input of a later item into that microbatch's static buffer (the hidden state, or
on the first stage the fed tokens), in one batched send/receive, as pipeline.generate's rounds
pair them.

On the CPU (gloo) the same step runs eagerly: the tests check it token for token against
Hugging Face `generate`, and the graph only records what the eager step launches.

Where the step applies (`static_reason` says why not, and the run reports it): whole heads
per rank (LocalCore: the head x head_dim and sequence-parallel cores keep their eager `step`)
and greedy choice (sampling draws on the host's seeded generator, textgen.sample). A MoE block
runs at static shapes there (moe.moe_static: every local expert over every row, weighted by
a dense gate matrix; an expert-parallel group gathers its rows and sums its partials with
collectives of fixed sizes), where the routed block's rows per expert depend on the routing.

On Hopper the step's Triton kernels (attention, the split and gate/up products, the end) launch
with programmatic dependent launch (runtime/dependent_launch.py; the run's metrics say so).

Attention reads the cache through runtime/decode_kernels.py (the kernel is recorded in the run's
metrics); a kernel that reads a prefix of the cache of fixed length (grouped_bmm) gets a graph
per bucket of `BUCKET` slots, so it reads at most BUCKET - 1 slots more than are filled.

Memory: the graph's private pool holds the step's transient tensors (planc/cost/memory.py's
layer_program run as a decode step, compiler/decode.step_program) for the whole run; the state
below is a few bytes per row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as torch_dist
from torch import Tensor

from planc.backends.torch.runtime import (
    decode_gemm,
    decode_kernels,
    decode_products,
    dependent_launch,
    dist,
    layers,
    vocab_parallel,
)
from planc.backends.torch.runtime.layers import (
    Attention,
    GatedMLP,
    Linear,
    LocalCore,
    Rope,
    rope_tables,
)
from planc.backends.torch.runtime.moe_block import MoeMLP
from planc.layout.schedule import (
    static_step_gate_up_silu,
    static_step_product_parts,
    static_step_qkv_split,
    static_step_reason,
)
from planc.layout.strategies import attention_core

if TYPE_CHECKING:
    from planc.backends.torch.runtime.dist import RankContext
    from planc.backends.torch.runtime.model import StageModel
    from planc.backends.torch.runtime.textgen import TextBatch

BUCKET = 256  # slots: a prefix-reading kernel's read length rounds up to this


def static_reason(ctx: RankContext, model: StageModel, text: TextBatch | None) -> str | None:
    """None when the static step serves this run, else why the eager rounds run it (the rule:
    planc/layout/schedule.static_step_reason)."""
    return static_step_reason(
        attention_core(ctx.cfg.splits, ctx.cfg.attention),
        text is not None and text.req.temperature != 0,
    )


@dataclass
class StepState:
    """What changes between tokens, on the device, for one microbatch of r rows."""

    tok: Tensor  # [r, 1] int64: the tokens the step feeds (the last ones chosen)
    pos: Tensor  # [r] int64: each row's position of the fed token (RoPE)
    slot: Tensor  # [1] int64: the cache slot its K/V go to (the same for every row)
    lengths: Tensor  # [r] int32: slots each row's attention reads, the new one included
    gap_lo: Tensor  # [r] int64: each row's first padded prompt slot (the context: no padding)
    col: Tensor  # [1] int64: the column of the token buffer the chosen token goes to
    # [r, 1, hidden]: on a pipeline stage after the first, the hidden state the step starts
    # from (received from the previous stage; the step adds its layers to it in place)
    hidden: Tensor | None = None

    def advance(self) -> None:
        for t in (self.pos, self.slot, self.lengths, self.col):
            t.add_(1)

    def save(self) -> list[Tensor]:
        return [t.clone() for t in self._all()]

    def restore(self, saved: list[Tensor]) -> None:
        for t, s in zip(self._all(), saved):
            t.copy_(s)

    def _all(self) -> list[Tensor]:
        mine = [self.tok, self.pos, self.slot, self.lengths, self.gap_lo, self.col]
        return mine + ([] if self.hidden is None else [self.hidden])


@dataclass(frozen=True)
class Exchange:
    """A pipeline stage's exchange at the end of its step (pipeline.generate's round): whether
    it sends its output on (a stage's hidden state; the last stage's tokens back to the first
    stage), and the microbatch whose next input it receives (None: none this round)."""

    send: bool
    recv: int | None


class StaticStep:
    """The decode steps of a rank at static addresses, on its pipeline stage (module
    docstring)."""

    def __init__(self, ctx: RankContext, model: StageModel) -> None:
        cfg, m, dev = ctx.cfg, ctx.cfg.model, ctx.device
        self.ctx, self.model = ctx, model
        self.context, self.rows = cfg.context, ctx.layout.micro_rows
        self.capacity = model.cache[0][0].shape[2] if model.cache else 0
        self.kernel = decode_kernels.choose(dev, ctx.dtype)
        tab = rope_tables(torch.arange(cfg.context + cfg.generate, device=dev), m.head_dim,
                          m.features, ctx.dtype)  # fmt: skip
        self.cos, self.sin = tab.cos[:, 0], tab.sin[:, 0]  # [positions, head_dim // 2]
        # The token buffer the graphs write (generate returns it; the next run overwrites it).
        self.tokens = torch.zeros((len(ctx.layout.batch_rows), cfg.generate), device=dev,
                                  dtype=torch.long)  # fmt: skip
        r = self.rows

        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> Tensor:
            return torch.zeros(shape, device=dev, dtype=dtype)

        lay = ctx.layout
        self.first, self.last = lay.is_first_stage, lay.is_last_stage
        # the stage's neighbours: where its output goes and where its input comes from
        self.send_to, self.recv_from = lay.decode_peers()
        self.states = [
            StepState(zeros(r, 1), zeros(r), zeros(1), zeros(r, dtype=torch.int32), zeros(r),
                      zeros(1), None if self.first else
                      torch.zeros((r, 1, m.hidden), device=dev, dtype=ctx.dtype))
            for _ in range(cfg.microbatches)
        ]
        self.use_graphs = dev.type == "cuda"
        self.graphs: dict[tuple[int, int, Exchange | None], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int, Exchange | None], Tensor] = {}  # what each sends
        # The warm-up runs' stream, made at the first capture. A stream per capture held one
        # more cuBLAS workspace each: a pipeline stage captures a graph per microbatch and
        # exchange, and its peak was that many workspaces above the prediction
        # (benchmarks/results/h200x2_decode_pp_run48.json and _seed.json).
        self.side: torch.cuda.Stream | None = None
        # A pipeline stage's exchange inside its graph (NCCL's send / receive captured);
        # PLANC_DECODE_EXCHANGE=eager posts it after each replay instead, for measuring.
        self.exchange_in_graph = os.environ.get("PLANC_DECODE_EXCHANGE", "") != "eager"
        self._release_registered = False  # with dist.before_shutdown, once
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.mode = "cuda_graph" if self.use_graphs else "eager (static step)"
        # The layers' elementwise math while the step is recorded: torch.compile fusions on a
        # GPU (layers.Elementwise says where and why it pays; PLANC_DECODE_COMPILE=0 keeps the
        # eager ops, for measuring), eager torch ops on the CPU.
        self.ops = layers.EAGER
        if self.use_graphs and os.environ.get("PLANC_DECODE_COMPILE", "1") != "0":
            self.ops = layers.compiled_elementwise()
            self.mode = "cuda_graph+compiled elementwise"
        # cuBLAS for the GEMMs decode_products (below) does not run. PLANC_DECODE_GEMM=timed
        # lets each GEMM shape run planc's weight-streaming kernel where its first product
        # times faster in isolation (decode_gemm's docstring): off by default, since inside
        # the step's graph those picks were slower, 883 against 771 us of GEMMs per replayed
        # step of 4 layers at batch 64 (benchmarks/results/h200_decode_profile_run9_b64_*.json).
        self.stream_gemm = (self.use_graphs and decode_gemm.available()
                            and os.environ.get("PLANC_DECODE_GEMM", "") == "timed")
        # The flash-decoding kernel's sequence splits: its static heuristic. Timing 1, 2, 4 and 8
        # times it on the rank's cache at the first step picked 8 at batch 64, which replays
        # 9% slower in a graph than the heuristic's 1 (benchmarks/results/h200_decode_attention_
        # run3.json), so nothing is tuned here; triton's autotuner picks the tile.
        self.splits: int | None = None
        # The step's end beside the Triton attention: the greedy token's argmax in two Triton
        # kernels (decode_kernels.argmax_triton; without a vocab split) and the token's copies
        # with the counters' advance in one (finish_step_triton), where torch took eleven.
        self.triton_end = self.kernel == "triton_flash_decode"
        # RoPE and the cache write inside the Triton attention kernel
        # (decode_kernels.rope_flash_decode_triton), for families without a q/k norm: no RoPE
        # kernel per layer and no gathers of the tables' rows per step
        # (schedule.static_step_fused says so to the cost model). PLANC_DECODE_ROPE=separate
        # keeps rope_store_triton before the attention, for measuring.
        self.fused_rope = (self.kernel == "triton_flash_decode"
                           and all(a.qk_norm is None for a in model.attns)
                           and os.environ.get("PLANC_DECODE_ROPE", "") != "separate")
        # Beside the Triton attention (decode_products' docstring has the measurements): the
        # gate/up GEMM with SiLU x up in its epilogue (one Triton kernel for two) where the MLP's
        # weights are plain, and o_proj / down_proj split over K by the step, their float32
        # partials summed by the residual add + norm after them (no split-K reduce kernel),
        # where the product is not all-reduced (schedule.static_step_product_parts: how many
        # parts).
        # PLANC_DECODE_PRODUCTS=cublas keeps cuBLAS's products and SiLU x up, for measuring.
        self.products = (self.kernel == "triton_flash_decode" and not self.stream_gemm
                         and os.environ.get("PLANC_DECODE_PRODUCTS", "") != "cublas")
        # (a MoE block runs moe_block.MoeMLP.static_from_normed: none of these)
        dense = all(isinstance(layer.mlp, GatedMLP) for layer in model.layers)
        self.gate_up_silu = self.products and dense and static_step_gate_up_silu(r, all(
            type(cast(GatedMLP, layer.mlp).gate_up) is Linear  # not an int8 / 2:4 linear
            for layer in model.layers))
        # The Triton kernels launch with programmatic dependent launch on Hopper (each starts
        # while the kernel before drains, then waits for it): runtime/dependent_launch.py has
        # what it measured (faster in separate processes, level in one process's A/B).
        # PLANC_DECODE_PDL=0 turns it off, for measuring.
        self.pdl = self.kernel == "triton_flash_decode" and dependent_launch.enabled(dev)
        # q/k/v too where schedule.static_step_qkv_split says (one row): the Triton split, whose
        # float32 partials the fused attention kernel sums as it reads them (no reduce kernel).
        self.parts = {"q/k/v": 1, "o_proj": 1, "down_proj": 1}
        if self.products and model.layers:
            attn, mlp = model.attns[0], model.layers[0].mlp
            if decode_products.split_runs_kernel(dev, r, 2):  # the kernel's device
                self.parts["q/k/v"] = static_step_qkv_split(
                    r, self.fused_rope, all(type(a.wqkv) is Linear for a in model.attns),
                    os.environ.get("PLANC_DECODE_QKV_SPLIT", ""))
            if type(attn.wo) is Linear and attn.out_group is None:
                self.parts["o_proj"] = static_step_product_parts("o_proj", r,
                                                                  attn.wo.weight.shape[1])
            if self.gate_up_silu and isinstance(mlp, GatedMLP) and type(mlp.down) is Linear \
                    and mlp.group is None:
                self.parts["down_proj"] = static_step_product_parts("down_proj", r,
                                                                 mlp.down.weight.shape[1])

    @property
    def gemm(self) -> str | dict[str, str]:
        """The step's GEMM kernels, for the run's metrics: per shape when timed."""
        layout = layers.weight_layout(self.ctx.device)  # how the plain linears' weights lie
        if self.stream_gemm:
            return decode_gemm.choices()
        what = f"{'cublas' if self.use_graphs else 'torch'} ({layout} weights)"
        if self.gate_up_silu:
            what += ", gate/up with SiLU x up in one Triton kernel"
        split = [f"{p} over K in {n}" for p, n in self.parts.items() if n > 1]
        if not split:
            return what
        by = ("Triton" if decode_products.split_runs_kernel(self.ctx.device, self.rows, 2)
              else "batched GEMM")
        return what + ", " + " and ".join(split) + f" (float32 partials, {by})"

    def start(self, m: int, first: Tensor | None, lengths: Tensor | None) -> None:
        """Microbatch m after its prefill: `first` [r] the chosen tokens (column 0; None on a
        pipeline stage that does not choose them: the first stage receives them into the
        state's `tok`); `lengths` [r] the rows' prompt lengths when right-padded (each row's
        fed token goes there, the slots from it on are padding), None when every prompt fills
        the context."""
        st, rows = self.states[m], slice(m * self.rows, (m + 1) * self.rows)
        if first is not None:
            self.tokens[rows, 0] = first
            st.tok.copy_(first[:, None])
        st.slot.fill_(self.context)
        st.lengths.fill_(self.context + 1)
        if lengths is None:
            st.pos.fill_(self.context)
            st.gap_lo.fill_(self.context)
        else:
            st.pos.copy_(lengths)
            st.gap_lo.copy_(lengths)
        st.col.fill_(1)

    def step(self, m: int, t: int, exchange: Exchange | None = None) -> Tensor:
        """Decode step t of microbatch m, then on a pipeline stage its `exchange`; returns the
        state's tokens [r, 1] (on the last stage the chosen ones)."""
        n_read = self._read_length(t)
        if not self.use_graphs:
            self._run(m, n_read, exchange)
            return self.states[m].tok
        inside = exchange if self.exchange_in_graph else None
        key = (m, n_read, inside)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._capture(m, n_read, inside)
        graph.replay()
        if exchange is not None and inside is None:  # PLANC_DECODE_EXCHANGE=eager
            self._exchange(self.outputs[key], exchange)
        return self.states[m].tok

    def inbox(self, m: int) -> Tensor:
        """Where microbatch m's next input is received: the fed tokens [r, 1] on the first
        stage, the hidden state [r, 1, hidden] on a later one."""
        st = self.states[m]
        return st.tok if st.hidden is None else st.hidden

    def pool_bytes(self) -> int | None:
        """Bytes of the CUDA segments of the graphs' private pool (held for the whole run;
        the allocator counts them as allocated only while a capture runs), None without
        graphs or when torch's snapshot format is not the expected one."""
        if self.pool is None:
            return None
        try:
            segs = torch.cuda.memory_snapshot()
            return sum(s["total_size"] for s in segs
                       if tuple(s.get("segment_pool_id", ())) == tuple(self.pool))  # fmt: skip
        except (KeyError, TypeError, RuntimeError):
            return None

    def _read_length(self, t: int) -> int:
        """Cache slots the kernel reads at step t (slots 0 .. context + t - 1 are filled)."""
        if self.kernel != "grouped_bmm":
            return self.capacity  # the kernel stops at each row's length on the device
        return min(self.capacity, -(-(self.context + t) // BUCKET) * BUCKET)

    def _capture(self, m: int, n_read: int, exchange: Exchange | None) -> torch.cuda.CUDAGraph:
        """A graph of microbatch m's step and its exchange: one eager run of the step on a side
        stream first (lazy initialisation, cuBLAS workspaces, kernel compilation stay out of the
        graph; not the exchange, which the peer runs once, in its replay), then the state is put
        back and the step is captured with the exchange (capturing runs nothing; the exchange's
        communicators exist: the prefill's exchanges made them)."""
        st = self.states[m]
        saved = st.save()
        if self.side is None:  # one for every capture: cuBLAS keeps a workspace per stream
            self.side = torch.cuda.Stream(self.ctx.device)
        side = self.side
        side.wait_stream(torch.cuda.current_stream(self.ctx.device))
        with torch.cuda.stream(side):
            try:
                self._run(m, n_read, None)
            except Exception as e:  # torch.compile / triton fail with many exception types
                if not self._plain(f"failed: {type(e).__name__}: {e}"):
                    raise
                st.restore(saved)
                self._run(m, n_read, None)
        torch.cuda.current_stream(self.ctx.device).wait_stream(side)
        st.restore(saved)
        if not self._release_registered:  # reset the graphs before the process group goes
            dist.before_shutdown(self.release)
            self._release_registered = True
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._run(m, n_read, exchange)
            # what an exchange after the replay sends; kept only then, since on a first stage
            # it is a block of the pool that later captures could reuse
            if exchange is None:
                self.outputs[(m, n_read, exchange)] = out
        except Exception as e:  # a compiled call that cannot be recorded: record the eager ops
            if not self._plain(f"not capturable: {type(e).__name__}: {e}"):
                raise
            st.restore(saved)
            return self._capture(m, n_read, exchange)
        return graph

    def release(self) -> None:
        """Reset the captured graphs (dist.before_shutdown: a live graph with NCCL collectives
        in it makes the process group's destroy hang); the step captures again if used."""
        torch.cuda.synchronize(self.ctx.device)
        for graph in self.graphs.values():
            graph.reset()
        self.graphs.clear()
        self.outputs.clear()

    def _plain(self, why: str) -> bool:
        """Fall back to the eager elementwise ops and cuBLAS after the compiled ops or the
        streaming GEMM failed (`why`, recorded in the mode); False when already there."""
        if self.ops is layers.EAGER and not self.stream_gemm:
            return False
        self.mode = f"cuda_graph (compiled ops / streaming GEMM {why})"[:300]
        self.ops, self.stream_gemm = layers.EAGER, False
        return True

    def _run(self, m: int, n_read: int, exchange: Exchange | None) -> Tensor:
        """The step, then `exchange`; returns what the stage sends (_step)."""
        with (layers.elementwise(self.ops), decode_gemm.streaming(self.stream_gemm),
              vocab_parallel.triton_argmax(self.triton_end)):
            out = self._step(m, n_read)
        if exchange is not None:
            self._exchange(out, exchange)
        return out

    def _exchange(self, out: Tensor, exchange: Exchange) -> None:
        """The stage's batched send of `out` and receive into a microbatch's inbox (one
        batch_isend_irecv, as pipeline.generate pairs them), waited for: in a graph, the
        capture stream joins NCCL's."""
        ops = []
        if exchange.send:
            assert self.send_to is not None
            ops.append(torch_dist.P2POp(torch_dist.isend, out, self.send_to))
        if exchange.recv is not None:
            assert self.recv_from is not None
            ops.append(torch_dist.P2POp(torch_dist.irecv, self.inbox(exchange.recv),
                                          self.recv_from))
        for work in torch_dist.batch_isend_irecv(ops) if ops else []:
            work.wait()

    def _step(self, m: int, n_read: int) -> Tensor:
        """Embed (first stage), every layer of the stage over its cache, then the final norm and
        the greedy token (last stage); advance the counters. Returns what the stage sends on:
        the tokens [r, 1] on the last stage, else the hidden state [r, 1, hidden].

        Each residual add is one call with the norm that reads its result (the next block's,
        or the final norm): x += block output; h = norm(x) (Elementwise.add_norm), so h is the
        normed input every block starts from; a stage before the last ends with the add alone
        (Elementwise.add_parts where the down product is split)."""
        model, st, ops = self.model, self.states[m], self.ops
        rows = slice(m * self.rows, (m + 1) * self.rows)
        x = model.lookup(st.tok) if st.hidden is None else st.hidden
        cos, sin = self.cos, self.sin  # the tables, which the fused kernel indexes itself
        if not self.fused_rope:
            cos, sin = cos[st.pos], sin[st.pos]  # [r, head_dim // 2]: each row's position
        norms = [cast(GatedMLP | MoeMLP, layer.mlp).norm for layer in model.layers]
        after_mlp: list[layers.RMSNorm | None] = [attn.norm for attn in model.attns[1:]]
        after_mlp.append(model.norm)  # None before the last stage: the add alone
        h = ops.norm(x, model.attns[0].norm.weight, model.attns[0].norm.eps)
        for i, (layer, attn, (k, v)) in enumerate(zip(model.layers, model.attns, model.cache)):
            o = self._attention(attn, h, cos, sin, k[rows], v[rows], st, n_read)
            h = self._add_norm(x, o, norms[i])
            o = self._mlp(cast(GatedMLP | MoeMLP, layer.mlp), h)
            h = self._add_norm(x, o, after_mlp[i])
        if not self.last:  # the hidden state goes on; the counters advance
            if self.triton_end:  # one kernel: the state's tokens copied onto themselves
                decode_kernels.finish_step_triton(st.tok[:, 0], st.tok, self.tokens[rows],
                                                  st.pos, st.slot, st.lengths, st.col)
            else:
                st.advance()
            return x
        tok = model.next_tokens(h, False)
        if self.triton_end:  # the token's copies and the counters in one kernel
            decode_kernels.finish_step_triton(tok, st.tok, self.tokens[rows], st.pos, st.slot,
                                              st.lengths, st.col)
            return st.tok
        st.tok.copy_(tok[:, None])
        self.tokens[rows].index_copy_(1, st.col, st.tok)
        st.advance()
        return st.tok

    def _add_norm(self, x: Tensor, o: Tensor, norm: layers.RMSNorm | None) -> Tensor:
        """x += o (a block's output, or its float32 partial products [parts, *x.shape]: one
        dimension more), then `norm` of x (None: x itself, a stage's output)."""
        if norm is None:
            if o.dim() > x.dim():
                self.ops.add_parts(x, o)
                return x
            return x.add_(o)
        if o.dim() > x.dim():
            return self.ops.add_parts_norm(x, o, norm.weight, norm.eps)
        return self.ops.add_norm(x, o, norm.weight, norm.eps)

    def _mlp(self, mlp: GatedMLP | MoeMLP, h: Tensor) -> Tensor:
        """The MLP block's output for its normed input h: reduced, or the down product's
        float32 partials when the step splits it (self.parts); a MoE block's at static shapes
        (moe.moe_static)."""
        if isinstance(mlp, MoeMLP):
            return mlp.static_from_normed(h)
        if not self.gate_up_silu:
            return mlp.from_normed(h)
        act = decode_products.gate_up_silu(h, cast(Linear, mlp.gate_up).weight)
        if self.parts["down_proj"] > 1:
            return decode_products.split_product(act, cast(Linear, mlp.down).weight,
                                                 self.parts["down_proj"])
        return mlp.reduced_down(act)

    def _attention(self, attn: Attention, h: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor,
                   v_cache: Tensor, st: StepState, n_read: int) -> Tensor:
        """The attention block's reduced output for its normed input h [r, 1, hidden]; cos /
        sin: the RoPE tables when the kernel fuses RoPE, else each row's rows of them."""
        core = cast(LocalCore, attn.core)
        if self.fused_rope:  # RoPE, the cache write and the attention in one kernel
            if self.parts["q/k/v"] > 1:  # its float32 partials, which the attention sums
                qkv = decode_products.split_kernel(
                    h.reshape(h.shape[0], -1), cast(Linear, attn.wqkv).weight,
                    self.parts["q/k/v"]).view(self.parts["q/k/v"], h.shape[0], -1, attn.local_dim)
            else:
                qkv = attn.qkv(h)[:, 0]
            o = decode_kernels.rope_flash_decode_triton(
                qkv, cos, sin, st.pos, st.slot, k_cache, v_cache, st.lengths, st.gap_lo,
                self.context, core.scale, attn.heads, self.splits)
        else:
            q = self._rotated_q(attn, h, cos, sin, k_cache, v_cache, st.slot)
            args = (q, k_cache, v_cache, st.lengths, st.gap_lo, self.context, core.scale)
            if self.kernel == "grouped_bmm":
                o = decode_kernels.grouped_attention(*args, n_read)
            else:
                o = decode_kernels.KERNELS[self.kernel](*args, self.splits)
            del q
        o = o.reshape(o.shape[0], 1, -1)
        if self.parts["o_proj"] > 1:  # its partials, which the add + norm after it sums
            return decode_products.split_product(o, cast(Linear, attn.wo).weight,
                                                 self.parts["o_proj"])
        return attn.output(o)

    def _rotated_q(self, attn: Attention, h: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor,
                   v_cache: Tensor, slot: Tensor) -> Tensor:
        """The step's rotated q [r, heads, d], its k and v written into the caches at slot."""
        if attn.qk_norm is None:  # RoPE and the cache write in one call (one kernel on GPUs)
            qkv = attn.qkv(h)[:, 0]  # [r, heads + 2 kv, d]
            return self.rope_store(qkv, cos, sin, slot, k_cache, v_cache, attn.heads)
        # the family's q/k norm first (Qwen3): the block's own projection
        q4, k, v = attn.project_normed(h, Rope(cos[:, None, None], sin[:, None, None]))
        k_cache.index_copy_(2, slot, k)
        v_cache.index_copy_(2, slot, v)
        return q4[:, :, 0]

    def rope_store(self, qkv: Tensor, cos: Tensor, sin: Tensor, slot: Tensor, k_cache: Tensor,
                   v_cache: Tensor, heads: int) -> Tensor:
        """decode_kernels.rope_store_*: the Triton kernel beside the Triton attention, else the
        layer's RoPE ops and index_copy_."""
        if self.kernel == "triton_flash_decode":
            return decode_kernels.rope_store_triton(qkv, cos, sin, slot, k_cache, v_cache, heads)
        return decode_kernels.rope_store_torch(qkv, cos, sin, slot, k_cache, v_cache, heads,
                                               self.ops.rope)  # fmt: skip
