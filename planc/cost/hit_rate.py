"""What physics says about an L2 hit rate: the compulsory misses of one forward step.

A hit rate is hits / requests over one forward step's L2 read requests on one device. Every
byte the step reads that exists before the step starts must be brought from HBM into L2 at
least once, unless it was resident at the step's start, and at most the L2's capacity can be,
so
    misses >= compulsory = max(0, unique - capacity)
where `unique` is those bytes (per device class, `step_reads`):
  - weights: every weight byte the device holds (memory["weights"]), because every layer's
    GEMMs read their whole matrices, except the embedding table of the first stage (a lookup
    touches only its tokens' rows; counted as 0), unless that table is also a decode's tied
    lm_head;
  - inputs: the first stage's `inputs` buffer (the step's embeddings or token ids, held in HBM
    for the run; planc/compiler/lower.stage_buffers);
  - decode: the KV cache of the prompt's positions, which every decode step reads (not
    counted under a sequence split, where which positions a rank holds depends on the
    layout).
Not counted: activations the step itself produces, and what it receives over the links (a
peer's write lands in the receiver's L2, and a fused or tiled schedule can keep intermediates
on chip): the same choice as the compulsory HBM bytes of cost/time.py. So `unique` is a lower
bound on the bytes any implementation must read from HBM, and `compulsory` on its misses.

The number of requests depends on the kernels' access order (a GEMM re-reads its tiles) and
is unbounded above, so no rate below 100% can be refuted from these numbers. A rate r needs
requests >= compulsory / (1 - r): the kernels must request each unique byte at least
k = compulsory / ((1 - r) x unique) times on average. That condition is the verdict; only a
rate above 100%, or of 100% with compulsory misses, is impossible.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from planc.compiler.ir import DeviceClass, PlacementGraph
from planc.compiler.spec import PlanSpec
from planc.compiler.units import human_bytes
from planc.layout.vocab import EMBED


@dataclass(frozen=True)
class StepReads:
    """One device class's bytes that a forward step must read and that exist before it."""

    cls: str
    weights: int
    inputs: int
    kv_cache: int
    capacity: int  # the L2's bytes

    @property
    def unique(self) -> int:
        return self.weights + self.inputs + self.kv_cache

    @property
    def compulsory(self) -> int:
        """Read misses no access order avoids: what cannot have been resident at the start."""
        return max(0, self.unique - self.capacity)

    def requests_needed(self, rate: Fraction) -> Fraction | None:
        """The fewest read requests (bytes) at which `rate` (a fraction < 1) can hold."""
        return Fraction(self.compulsory) / (1 - rate) if rate < 1 else None

    def rerequests(self, rate: Fraction) -> Fraction:
        """k: requests per unique byte that `rate` (< 1) needs on average (0: none read)."""
        needed = self.requests_needed(rate)
        return needed / self.unique if needed is not None and self.unique else Fraction(0)

    @property
    def streaming_rate(self) -> Fraction:
        """The most a pass that requests each unique byte once can hit: the resident share."""
        return Fraction(min(self.unique, self.capacity), self.unique) if self.unique \
            else Fraction(1)

    def parts(self) -> str:
        terms = [f"weights {human_bytes(self.weights)}"]
        if self.inputs:
            terms.append(f"inputs {human_bytes(self.inputs)}")
        if self.kv_cache:
            terms.append(f"the prompt's KV cache {human_bytes(self.kv_cache)}")
        return " + ".join(terms)


def _embed_bytes(cls: DeviceClass) -> int:
    return sum(s.bytes for s in cls.shards if s.name == EMBED and not s.per_layer)


def step_reads(plan: PlanSpec, graph: PlacementGraph) -> list[StepReads]:
    """Per device class, the bytes one forward step (a decode plan: one decode step) must read
    that exist before the step starts (the module docstring says which and why)."""
    decode = graph.phase == "decode"
    first, last = graph.classes[0].id, graph.classes[-1].id
    tied = plan.model.features.tie_embeddings
    out = []
    for c in graph.classes:
        lookup_only = c.id == first and not (decode and c.id == last and tied)
        weights = c.memory["weights"] - (_embed_bytes(c) if lookup_only else 0)
        inputs = 0 if decode else sum(b.bytes for b in c.buffers
                                      if b.role == "io" and b.name == "inputs")
        kv = 0
        if decode and plan.degree("seq") == 1:
            w = plan.workload
            kv = c.memory.get("kv_cache", 0) * w.context // (w.context + w.generate)
        out.append(StepReads(c.id, weights, inputs, kv, graph.cache_capacity))
    return out
