"""to_run_config: a verified plan's placement graph -> the RunConfig its program executes.

Placement comes from the graph only (mesh, splits, stages, microbatches, attention, the storage
format of every shard, the predicted peaks), so what the verifier proved is what every rank
slices; the model's own numbers (sizes, vocabulary, dtype) come from the plan's model.
"""

from __future__ import annotations

from planc.backends.torch.runtime.config import ModelDims, RunConfig
from planc.compiler.ir import PlacementGraph, ranks_of
from planc.compiler.spec import PlanSpec

TORCH_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16",
                "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def to_run_config(plan: PlanSpec, graph: PlacementGraph, *, dtype: str | None = None,
                  seed: int = 0, warmup: int = 1, repeats: int = 3) -> RunConfig:
    m = plan.model
    predicted = [0] * graph.mesh.size
    for cls in graph.classes:
        runtime_peak = cls.memory["peak"] - cls.memory["reserve"]
        for r in ranks_of(graph.mesh, cls):
            predicted[r] = runtime_peak
    formats = {s.format for c in graph.classes for s in c.shards}
    decode = graph.phase == "decode"
    return RunConfig(
        model=ModelDims(arch=m.arch, layers=m.layers, hidden=m.hidden, heads=m.heads,
                        kv_heads=m.kv_heads, head_dim=m.head_dim, ffn=m.ffn, vocab=m.vocab,
                        experts=m.experts, top_k=m.top_k or 2, features=m.features),
        mesh=tuple((a.name, a.size) for a in graph.mesh.axes),
        batch=graph.batch,
        seq=graph.seq,  # decode: the prompt, what the prefill runs (graph.seq == context)
        splits={dim: tuple(axes) for dim, axes in graph.splits.items()},
        stages=tuple(s.layers for s in graph.stages) if "layers" in graph.splits else (),
        microbatches=graph.microbatches,
        attention=graph.attention,
        zigzag=graph.zigzag,
        compress_int8=any("int8" in f for f in formats),
        compress_mlp_2_4=any("2:4" in f for f in formats),
        dtype=dtype or TORCH_DTYPES.get(m.dtype, "float32"),  # type: ignore[arg-type]
        seed=seed,
        predicted_peak=tuple(predicted),
        warmup=warmup,
        repeats=repeats,
        phase=graph.phase,
        context=graph.context if decode else 0,
        generate=graph.generate if decode else 0,
    )
