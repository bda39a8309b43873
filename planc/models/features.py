"""ModelFeatures: the per-family facts that change a model's numbers, beyond its dimensions.

One definition, shared by the resolved spec (planc/compiler/spec.py ModelSpec.features), the
placement graph's run configuration and the torch runtime (ModelDims.features), so a family
difference (QKV bias, q/k norm, tied embeddings, rope scaling) is data carried from the plan or
the checkpoint's config.json to the ranks, never a new code path chosen by name. Defaults are
Llama 2's: plain RoPE with theta 10,000, RMSNorm eps 1e-5, no biases, separate lm_head.
Torch-free and z3-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RopeValue = float | int | str


@dataclass(frozen=True)
class ModelFeatures:
    family: str = "llama"  # Hugging Face model_type (llama, mistral, qwen2, qwen3, mixtral, ...)
    rope_theta: float = 10000.0
    # HF's rope scaling parameters other than theta, as sorted (key, value) pairs so the
    # dataclass stays hashable; () is plain RoPE. e.g. (("factor", 8.0), ("rope_type", "llama3")).
    rope_scaling: tuple[tuple[str, RopeValue], ...] = ()
    norm_eps: float = 1e-5  # RMSNorm epsilon (HF rms_norm_eps)
    qkv_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3)
    tie_embeddings: bool = False  # lm_head shares the embedding matrix (one tensor)
    norm_topk: bool = True  # MoE: the top-k router weights are renormalised to sum to 1
    # Attention sees at most this many tokens back (Mistral); None: all. planc refuses a window
    # shorter than the workload's context (resolve), so within a plan it never cuts anything.
    sliding_window: int | None = None

    @property
    def rope_type(self) -> str:
        return str(dict(self.rope_scaling).get("rope_type", "default"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rope_scaling"] = [list(kv) for kv in self.rope_scaling]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFeatures:
        d = dict(data)
        d["rope_scaling"] = tuple((str(k), v) for k, v in d.get("rope_scaling", ()))
        return cls(**d)


# The defaults as one shared instance, for dataclass fields that default to them (frozen, so
# sharing it is safe; a module constant rather than a call in each class body).
DEFAULT_FEATURES = ModelFeatures()
