"""RunConfig: everything a generated program needs to build and run one plan.

This is the contract between the compiler (which lowers a verified plan to a RunConfig) and the
torch runtime (which executes it). It is plain data: the emitted program embeds it as a `repr()`
of a JSON-compatible dict and rebuilds it with `RunConfig.from_dict`, so no user string from a
.plan file ever becomes Python code. This module must not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from planc.models.features import DEFAULT_FEATURES, ModelFeatures

Arch = Literal["llama", "mixtral"]
DType = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class ModelDims:
    arch: Arch
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int  # intermediate size of the gated SiLU MLP (per expert for mixtral)
    vocab: int | None = None  # None: the program feeds inputs_embeds, no embedding table
    experts: int = 0  # mixtral only
    top_k: int = 2  # mixtral only: experts per token
    features: ModelFeatures = DEFAULT_FEATURES  # rope, norm eps, biases, q/k norm, tying


@dataclass(frozen=True)
class RunConfig:
    model: ModelDims
    # Mesh axes in order; the last axis varies fastest (rank = row-major index of coordinates).
    mesh: tuple[tuple[str, int], ...]
    batch: int
    seq: int
    # Which model dimension is split over which mesh axes. Keys are from the closed vocabulary
    # batch, seq, layers, heads, kv_heads, head_dim, ffn, experts. Several axes for one dim
    # mean the product of those axes, first axis outermost.
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Pipeline: stages[i] = (first_layer, last_layer_exclusive) run by the ranks whose
    # coordinate on splits["layers"] axis is i. Empty when layers are not split.
    stages: tuple[tuple[int, int], ...] = ()
    microbatches: int = 1
    # Sequence parallel attention when splits has "seq": "ring" (K/V travel round the ring,
    # log-sum-exp merge) or "gather" (all-gather K/V). zigzag: causal load balancing, each rank
    # holds chunks i and 2R-1-i of 2R chunks.
    attention: Literal["local", "ring", "gather"] = "local"
    zigzag: bool = True
    causal: bool = True
    # Compression: int8 weight-only (symmetric per-output-channel scales) on every linear;
    # 2:4 semi-structured sparsity on the MLP linears (keep the 2 largest |w| of every 4 along
    # the input dimension).
    compress_int8: bool = False
    compress_mlp_2_4: bool = False
    dtype: DType = "float32"
    seed: int = 0
    # Per-rank buffer sizes the compiler predicts (bytes), reported beside measured peaks.
    predicted_peak: tuple[int, ...] = ()
    warmup: int = 1
    repeats: int = 3
    # Rank 0 gathers the full output and compares it with Hugging Face transformers run on the
    # same checkpoint and inputs. Off for large benchmarks, where one device cannot hold the model.
    check_reference: bool = True
    # Greedy decode (runtime/pipeline.py, generate): prefill a prompt of `context` tokens into a KV
    # cache of context + generate positions, then generate - 1 steps of one token per sequence.
    # With phase "decode", seq is the prompt's length (= context): the prefill sees it as seq.
    phase: Literal["prefill", "decode"] = "prefill"
    context: int = 0
    generate: int = 0

    @property
    def world_size(self) -> int:
        n = 1
        for _, size in self.mesh:
            n *= size
        return n

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"]["features"] = self.model.features.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        d = dict(data)
        model = dict(d["model"])
        model["features"] = ModelFeatures.from_dict(model.get("features", {}))
        d["model"] = ModelDims(**model)
        d["mesh"] = tuple((str(a), int(s)) for a, s in d["mesh"])
        d["splits"] = {k: tuple(v) for k, v in d.get("splits", {}).items()}
        d["stages"] = tuple((int(a), int(b)) for a, b in d.get("stages", ()))
        d["predicted_peak"] = tuple(int(x) for x in d.get("predicted_peak", ()))
        return cls(**d)
