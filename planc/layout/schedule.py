"""The decode schedule: KV cache slots per step, the pipeline's rounds, the part that holds the
prompt's last position.

Steps. Step 0 is the prefill of the prompt (context tokens, seq == context); it
yields the first token. Step t >= 1 feeds the token of step t - 1, at global position
context + t - 1, and yields token t. So generate tokens take generate - 1 decode steps, and the
cache holds at most context + generate - 1 positions (allocated: context + generate, as the
compiler's planc/compiler/decode.py counts it).

KV cache per rank and layer: [rows, kv_heads_local, capacity, head_dim_local] for its batch rows
(data / expert parallel), its kv heads (tensor parallel) and head_dim slice, its stage's layers.
With a sequence split over sp ranks each rank keeps only its chunk: the prompt's tokens it holds
(zig-zag chunks i and 2sp-1-i for ring / gather attention, as slices.zigzag_chunks says) in slots
[0, s_local), then the generated tokens appended round-robin: the token at position
context + t - 1 (step t) goes to rank (t - 1) % sp of the sequence group, in its next free slot.
Every rank of the group computes that token's q/k/v (the one new token is replicated over the
group), the owner stores its K/V, each rank attends over its own slots and the partial outputs
are merged by log-sum-exp (flash-decoding). Slots are not in position order; decode attention
sees every cached key, so only the RoPE angles (applied at the token's global position before it
is stored) carry positions. capacity = ceil((context + generate) / sp) per rank, which holds the
prompt chunk plus ceil((generate - 1) / sp) tokens whenever sp divides the context.
"""

from __future__ import annotations

from dataclasses import dataclass

from planc.layout.slices import cdiv


def cache_capacity(context: int, generate: int, sp: int) -> int:
    """Cache slots per sequence on one rank of a sequence group of size sp."""
    return cdiv(context + generate, sp)


def new_token_owner(step: int, sp: int) -> int:
    """Rank of the sequence group that stores the K/V of decode step `step` (>= 1)."""
    return (step - 1) % sp


@dataclass(frozen=True)
class Slots:
    """One step on one rank: the global positions of its tokens (RoPE), the local cache slots
    [write[0], write[1]) its K/V go to (None: another rank of the sequence group stores them),
    and how many leading slots are filled once it is written (what attention reads)."""

    positions: list[int]
    write: tuple[int, int] | None
    valid: int


def step_slots(context: int, prompt_positions: list[int], sp: int, part: int, step: int
               ) -> Slots:
    """Slots of step `step` on sequence part `part` of sp; prompt_positions: the part's share of
    the prompt (slices.indices of the sequence)."""
    s_local = len(prompt_positions)
    if step == 0:
        return Slots(list(prompt_positions), (0, s_local), s_local)
    before = (step - 1 - part + sp - 1) // sp  # earlier steps this part stored
    slot = s_local + before
    position = context + step - 1
    if new_token_owner(step, sp) == part:
        return Slots([position], (slot, slot + 1), slot + 1)
    return Slots([position], None, slot)


def pipeline_rounds(microbatches: int, steps: int, stages: int) -> list[int]:
    """The round in which the first stage runs each item i = t * microbatches + m of a
    pipelined decode; stage k runs it in round rounds[i] + k.

    Each round every stage runs at most one item, then exchanges with its neighbours in one
    batched send/receive (the runtime's pipeline.generate): stage k's output reaches stage k + 1
    for the next round, and the last stage's token of item i reaches the first stage, which needs
    it for item i + microbatches. So
    rounds[i] = max(rounds[i - 1] + 1, rounds[i - microbatches] + stages):
    with microbatches >= stages the first stage never waits (rounds[i] = i); with fewer, each
    step pays the pipeline's fill."""
    rounds: list[int] = []
    for i in range(microbatches * steps):
        r = rounds[i - 1] + 1 if i else 0
        if i >= microbatches:
            r = max(r, rounds[i - microbatches] + stages)
        rounds.append(r)
    return rounds


def steady_step_rounds(microbatches: int, stages: int) -> list[frozenset[int]]:
    """The rounds of one decode step once the pipeline is full, each as the set of stages that
    run an item in it (pipeline_rounds: stage k runs item i in round rounds[i] + k):
    max(microbatches, stages) rounds; with fewer microbatches than stages only some stages run
    in each (the others wait for the fill)."""
    m, p = max(1, microbatches), max(1, stages)
    first = pipeline_rounds(m, p + 3, p)
    t = p + 1  # a step past the fill, with a whole step after it
    runs: dict[int, set[int]] = {}
    for r in first:
        for k in range(p):
            runs.setdefault(r + k, set()).add(k)
    return [frozenset(runs.get(r, ())) for r in range(first[t * m], first[(t + 1) * m])]


def checks_stop(round_index: int, microbatches: int, stages: int) -> bool:
    """Whether a pipelined text decode asks, at the start of this round, if every sequence has
    stopped (a world all-reduce read on the host, runtime/textgen.TextBatch.all_stopped): once
    a step, every max(microbatches, stages) rounds (what steady_step_rounds counts), so a run
    waits on the host once a token, not once a round. Every rank walks the same rounds
    (stage_rounds), so all ask in the same rounds and stop in the same one."""
    return round_index % max(1, microbatches, stages) == 0


@dataclass(frozen=True)
class Round:
    """One stage in one round: the item it runs (or None), whether that item's output goes on
    (to the next stage, or from the last stage back to the first as the input of item
    run + microbatches), and the item whose input it receives in the round's exchange."""

    run: int | None
    send: bool
    recv: int | None


def stage_rounds(microbatches: int, steps: int, stages: int, stage: int) -> list[Round]:
    """Every round of `stage` in a pipelined decode (pipeline_rounds), in order."""
    first = pipeline_rounds(microbatches, steps, stages)
    n, last = len(first), stages - 1
    runs = {r + stage: i for i, r in enumerate(first)}
    if stage > 0:  # the previous stage's output, for the same item
        recvs = {r + stage - 1: i for i, r in enumerate(first)}
    elif stages > 1:  # the last stage's tokens, for the same microbatch's next step
        recvs = {r + last: i + microbatches for i, r in enumerate(first) if i + microbatches < n}
    else:
        recvs = {}
    out = []
    for rnd in range(first[-1] + stages):
        i = runs.get(rnd)
        send = i is not None and (stage < last or (stages > 1 and i + microbatches < n))
        out.append(Round(i, send, recvs.get(rnd)))
    return out


def last_position_part(positions_of: list[list[int]], context: int) -> tuple[int, int]:
    """(sequence part, local index) holding the prompt's last position context - 1."""
    for part, positions in enumerate(positions_of):
        if context - 1 in positions:
            return part, positions.index(context - 1)
    raise ValueError(f"no sequence part holds position {context - 1}")


# Ops of a decode layer (planc/cost/memory.py's layer_program) that the static step computes
# inside the kernel of another op (backends/torch/runtime/decode_step.py): each block's norm
# with the residual add before it (Elementwise.add_norm), for a family without a q/k norm RoPE
# of q and k with the K/V cache write inside the attention kernel
# (decode_kernels.rope_flash_decode_triton), and, with the gate/up weights plain (not int8 or
# 2:4) and few enough rows, SiLU x up inside the gate/up GEMM's kernel
# (decode_products.gate_up_silu: `static_step_gate_up_silu`). The cost model starts no kernel
# for them.
def static_step_fused(qk_norm: bool, gate_up_silu: bool = False) -> frozenset[str]:
    return frozenset({"attn_norm", "mlp_norm"} | (set() if qk_norm else {"rope_q", "rope_k"})
                     | ({"silu_mul"} if gate_up_silu else set()))


def micro_rows(batch: int, batch_parts: int, microbatches: int) -> int:
    """Rows of one microbatch on a device: its even part of the batch (slices.even) over the
    microbatches."""
    return batch // batch_parts // max(1, microbatches)


GATE_UP_SILU_MAX_ROWS = 64  # decode_products.gate_up_silu pads rows to a power of two <= this


def static_step_gate_up_silu(rows: int, dense_mlp: bool) -> bool:
    """Whether a static step of `rows` rows per microbatch makes SiLU x up inside its gate/up
    GEMM (decode_products.gate_up_silu): a plain (dense) MLP weight and at most
    GATE_UP_SILU_MAX_ROWS rows. The runtime picks the kernel by this rule and the cost model
    prices the step by it."""
    return dense_mlp and 1 <= rows <= GATE_UP_SILU_MAX_ROWS


SPLIT_ALIGN = 64  # each part's K: a multiple of this (cuBLAS's K tile), else no split
# the Triton split's rows: its x tile is padded as gate_up_silu's (decode_products.split_kernel)
SPLIT_KERNEL_MAX_ROWS = GATE_UP_SILU_MAX_ROWS


def static_step_split_parts(rows: int) -> int:
    """Parts of K of the static step's split products (static_step_product_parts and
    static_step_qkv_parts below) at `rows` rows: 4 up to 16 rows, else 2."""
    return 4 if rows <= 16 else 2


def static_step_qkv_parts(rows: int, forced: str = "") -> int:
    """Parts of K for the q/k/v product of the static step with the fused attention kernel
    (which sums the float32 partials as it reads them: decode_kernels.rope_flash_decode_triton)
    at `rows` rows; 1: cuBLAS's GEMM. Split in 4 at one row only: in one process's A/B of the
    4-layer cut (h200_decode_profile_run42_l4_qkv_split.json) the split made the step 1.8%
    faster at 1 row and 0.9% / 0.6% slower at 8 / 64 rows (in 4 / 2). forced
    (PLANC_DECODE_QKV_SPLIT, for measuring): "0" never splits, "1" splits as o_proj would.
    Where the split applies at all: static_step_qkv_split."""
    if forced == "0":
        return 1
    return static_step_split_parts(rows) if forced == "1" or rows == 1 else 1


def static_step_qkv_split(rows: int, rope_in_attention: bool, plain_weight: bool,
                          forced: str = "") -> int:
    """Parts of K the static step's q/k/v product runs in (1: cuBLAS's GEMM): the Triton split
    needs the attention kernel to sum its partials, so RoPE inside that kernel (no q/k norm),
    a plain weight (an int8 or biased q/k/v keeps its own product: Qwen2's bias) and at most
    SPLIT_KERNEL_MAX_ROWS rows; then static_step_qkv_parts. The runtime (decode_step
    .StaticStep), the memory model (compiler/decode.decode_rows) and the time model
    (cost/time.static_step_triton_products) all ask this."""
    if not (rope_in_attention and plain_weight and rows <= SPLIT_KERNEL_MAX_ROWS):
        return 1
    return static_step_qkv_parts(rows, forced)


def static_step_product_parts(product: str, rows: int, k: int) -> int:
    """Parts of K for `product` ("o_proj" or "down_proj") of the static step at `rows` rows and
    inner size k (backends/torch/runtime/decode_products' docstring: measured at 1, 8 and 64
    rows); 1: the plain GEMM. o_proj above 16 rows is split in 2 only up to
    SPLIT_KERNEL_MAX_ROWS rows, where the Triton kernel runs it: the bmm split lost to cuBLAS
    there. The runtime splits by this rule (decode_step.StaticStep) and the cost model prices
    the products by it (cost/time.static_step_triton_products)."""
    s = static_step_split_parts(rows) if product == "down_proj" or rows <= SPLIT_KERNEL_MAX_ROWS \
        else 1
    return s if s > 1 and k % (s * SPLIT_ALIGN) == 0 else 1


def static_step_extra_kernels(vocab_parts: int = 1, qk_norm: bool = False, first: bool = True,
                              last: bool = True) -> int:
    """Kernels of a static step outside the layer program (the Triton attention's path) on a
    stage (`first`, `last`: where it is in the pipeline; one GPU's step is both), with the
    vocabulary split over `vocab_parts` ranks (1: not split).

    One stage, not split: 5, counted from the code (decode_step.StaticStep._step): the
    embedding gather, the first layer's attention norm, the greedy argmax's two
    (decode_kernels.argmax_triton) and the one that writes the token and advances the counters
    (finish_step_triton); with a q/k norm (RoPE outside the attention kernel) also the two
    gathers of each row's RoPE table rows: 7. Profiled before the end kernels came in, the step
    had 15 (an argmax of five torch kernels and six for the token and counters:
    benchmarks/results/h200_decode_profile_run6_l4.json); the whole-model TPOTs of run 13 were
    predicted with 7 (the gathers were made then). Split (counted from the code, not profiled:
    that needs several GPUs): the lookup's masking around its all_reduce (7:
    vocab_parallel.lookup), the first norm, the split's greedy agreement
    (vocab_parallel.greedy_tokens: 12 around its all_gather, which copies each of the parts out
    of NCCL's buffer: one kernel a part) and the end kernel: 21 + parts (a padded last part adds
    its -inf fill), 23 + parts with the gathers. A stage before the last chooses no token: its
    last residual add (the layer program's, with no norm after it) ends its layers and the end
    kernel only advances the counters; a stage after the first embeds nothing."""
    embed = 0 if not first else 1 if vocab_parts <= 1 else 7
    end = (2 if vocab_parts <= 1 else 12 + vocab_parts) if last else 0
    gathers = 2 if qk_norm else 0
    return embed + 1 + end + 1 + gathers


def static_step_reason(attention_core: str, sampling: bool) -> str | None:
    """Why a decode step cannot run at static addresses (one CUDA graph per microbatch and
    exchange on each pipeline stage, backends/torch/runtime/decode_step.py), or None when it
    can. The runtime picks the step by this rule and the cost model prices the step by it
    (planc/cost/time.py)."""
    if attention_core != "heads":
        return "the attention core is not whole heads per rank"
    if sampling:
        return "sampling draws on the host"
    return None
