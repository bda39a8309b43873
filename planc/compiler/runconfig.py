"""to_run_config: a verified plan -> the RunConfig its generated program executes.

The RunConfig (planc/backends/torch/runtime/config.py) is plain data and torch-free, so this
stays on the compiler side; the graph supplies the stages and the predicted per-rank peaks.
"""

from __future__ import annotations

from planc.backends.torch.runtime.config import ModelDims, RunConfig
from planc.compiler.ir import PlacementGraph, ranks_of
from planc.compiler.lower import attention_mode, microbatches, plan_stages, zigzag
from planc.compiler.spec import PlanSpec

TORCH_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16",
                "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def to_run_config(plan: PlanSpec, graph: PlacementGraph, *, dtype: str | None = None,
                  seed: int = 0, warmup: int = 1, repeats: int = 3) -> RunConfig:
    m = plan.model
    splits = {sh_dim: tuple(sh.axes) for sh in plan.shards for sh_dim in sh.dims}
    if "heads" in splits and "kv_heads" not in splits:
        splits["kv_heads"] = splits["heads"]  # kv_heads follow heads (see check_structure)
    predicted = [0] * graph.mesh.size
    for cls in graph.classes:
        runtime_peak = cls.memory["peak"] - cls.memory["reserve"]
        for r in ranks_of(graph.mesh, cls):
            predicted[r] = runtime_peak
    w = plan.workload
    assert w.batch is not None and w.seq is not None
    decode = w.phase == "decode"
    return RunConfig(
        model=ModelDims(arch=m.arch, layers=m.layers, hidden=m.hidden, heads=m.heads,
                        kv_heads=m.kv_heads, head_dim=m.head_dim, ffn=m.ffn, vocab=m.vocab,
                        experts=m.experts, top_k=m.top_k or 2, features=m.features),
        mesh=tuple((a, s or 1) for a, s in plan.mesh),
        batch=w.batch,
        seq=w.context if decode else w.seq,  # decode: the prompt is what the prefill runs
        splits=splits,
        stages=tuple(plan_stages(plan)) if "layers" in splits else (),
        microbatches=microbatches(plan),
        attention=attention_mode(plan),  # type: ignore[arg-type]
        zigzag=zigzag(plan),
        compress_int8=plan.compress_int8,
        compress_mlp_2_4=plan.compress_mlp_2_4,
        dtype=dtype or TORCH_DTYPES.get(m.dtype, "float32"),  # type: ignore[arg-type]
        seed=seed,
        predicted_peak=tuple(predicted),
        warmup=warmup,
        repeats=repeats,
        phase=w.phase,
        context=w.context if decode else 0,
        generate=w.generate if decode else 0,
    )
