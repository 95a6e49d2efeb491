"""Per-GPU memory of a preset split over N GPUs by tensor parallelism (`python -m server.plan
--tensor-parallel N`).

Unlike `device_map` sharding (server/model/plan.py), where each GPU holds whole layers, every GPU
holds 1/N of every layer that transformers' `tp_plan` splits, and whole copies of the rest:

- split: q/k/v/o and the MLP's projections, the input embeddings and the LM head (over the
  vocabulary; the last GPU's slice is shorter where N does not divide it, as DTensor's Shard does);
- whole on each GPU: norms, rotary buffers, and anything the plan does not name.

The model is the planner's meta model (same quantizer, so int8/int4/fp8 weights are sized as served;
a quantized weight's scales split with its rows or columns). Each GPU caches K and V of its own
KV heads for every layer: layers x 2 x (kv_heads / N) x head_dim x dtype bytes per token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig
from transformers.integrations.accelerate import compute_module_sizes

from server.model.plan import (
    DTYPE_BYTES,
    ModelFacts,
    PlanError,
    build_empty_model,
    config_kwargs,
    parse_gpus,
    parse_size,
    quantizer_for,
    scale_bytes,
    scale_bytes_of,
)
from server.model.tensor_parallel import kv_heads_per_rank, refusal, working_sizes
from server.presets import Preset, load_preset
from server.units import gib

# transformers' tp styles that split a module's weight, by the weight dimension they split
# (transformers/distributed/tensor_parallel.py): Linear weights are (out, in), Embedding (vocab, hidden)
SPLIT_DIM = {
    "colwise": 0, "colwise_gather_output": 0, "colwise_rep": 0, "packed_colwise": 0, "embedding_rowwise": 0,
    "rowwise": 1, "rowwise_split_input": 1, "rowwise_rep": 1, "packed_rowwise": 1, "embedding_colwise": 1,
}
# styles that change the forward, not the weights: every GPU keeps the module whole
WHOLE_STYLES = ("replicate", "sequence_parallel", "all_reduce", "replicated_with_grad_allreduce",
                "local_params")


@dataclass
class RankPlan:
    rank: int
    capacity: int
    split: int  # its slices of the split layers
    whole: int  # what every GPU holds whole
    reserve: int

    @property
    def weights(self) -> int:
        return self.split + self.whole

    @property
    def free(self) -> int:
        return max(self.capacity - self.weights - self.reserve, 0)


@dataclass
class TensorParallelPlan(ModelFacts):
    kv_heads: int
    kv_heads_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    ranks: list[RankPlan]
    working: list[int]  # the tensor-parallel sizes this preset allows
    tp_plan: dict[str, str]

    @property
    def tensor_parallel(self) -> int:
        return len(self.ranks)

    @property
    def tokens_fit(self) -> int:
        """Tokens of KV cache that fit: every GPU caches every layer, for its own KV heads."""
        return min(r.free // self.kv_bytes_per_token_per_gpu for r in self.ranks)

    def render(self) -> str:
        n = self.tensor_parallel
        quantized = f" weights quantized to {self.quantization}" if self.quantization != "none" else ""
        tokens = self.tokens_fit
        lines = [
            f"preset {self.preset}: {self.model_type} ({self.config_class}), {self.parameters / 1e9:.2f}B "
            f"parameters, {self.dtype}{quantized}, weights {gib(self.weight_bytes)} in all",
            f"tensor parallel over {n} GPUs (transformers' tp_plan): attention, MLP, embeddings and LM head "
            f"split {n} ways; norms and buffers whole on every GPU",
            f"{'rank':>4} {'capacity':>11} {'weights':>11} {'split':>11} {'whole':>11} {'reserve':>9} "
            f"{'free for KV':>11}",
            *(f"{r.rank:>4} {gib(r.capacity):>11} {gib(r.weights):>11} {gib(r.split):>11} "
              f"{r.whole / 2**20:>7.2f} MiB {gib(r.reserve):>9} {gib(r.free):>11}" for r in self.ranks),
            f"KV cache per GPU: {self.kv_bytes_per_token_per_gpu:,} bytes per token "
            f"({self.kv_heads_per_gpu} of {self.kv_heads} KV heads, every layer)",
            f"tokens that fit in the KV cache: {tokens:,} (= {tokens / self.context_length:.1f} sequences "
            f"of the full {self.context_length:,}-token context)",
            f"tensor-parallel sizes that work for {self.preset}: {', '.join(map(str, self.working))}",
            f"serve it with TENSOR_PARALLEL={n}" if self.quantization == "none" else
            f"QUANTIZATION={self.quantization} is not served under tensor parallelism (the server refuses "
            "it at start): this plan shows the memory it would take",
        ]
        return "\n".join(lines)


def shard_sizes(size: int, n: int) -> list[int]:
    """How DTensor's Shard splits `size` over n ranks (torch.chunk): ceil(size / n) each, the last shorter."""
    step = -(-size // n)
    return [max(0, min(step, size - r * step)) for r in range(n)]


def compile_plan(tp_plan: dict[str, str]) -> list[tuple[re.Pattern[str], str]]:
    """`model.layers.*.mlp.up_proj` -> a pattern for every layer's module name."""
    return [(re.compile(re.escape(key).replace(r"\*", r"\d+") + "$"), style)
            for key, style in tp_plan.items()]


def style_of(name: str, plan: list[tuple[re.Pattern[str], str]]) -> str | None:
    return next((style for pattern, style in plan if pattern.match(name)), None)


def split_dim(name: str, plan: list[tuple[re.Pattern[str], str]]) -> int | None:
    """The weight dimension `name`'s style splits, or None where every GPU keeps it whole."""
    style = style_of(name, plan)
    if style is None or style in WHOLE_STYLES:
        return None
    if style not in SPLIT_DIM:
        raise PlanError(f"the planner does not know tp style {style!r} (module {name})")
    return SPLIT_DIM[style]


def rank_bytes(model: Any, n: int, quantization: str, dtype_bytes: int,
               quantizer: Any) -> tuple[list[int], int]:
    """Each rank's bytes of the split modules, and the bytes every rank holds whole."""
    sizes = compute_module_sizes(model, hf_quantizer=quantizer)[0]
    plan = compile_plan(model.tp_plan)
    split, counted = [0] * n, 0
    for name, module in model.named_modules():
        dim, total = split_dim(name, plan), sizes.get(name, 0)  # a tied weight counts where it is owned
        if dim is None or not total:
            continue
        full = module.weight.shape[dim]
        bias = getattr(module, "bias", None)
        bias_bytes = bias.numel() * bias.element_size() if isinstance(bias, torch.Tensor) else 0
        for r, part in enumerate(shard_sizes(full, n)):  # a bias splits with the rows, not the columns
            bias_part = bias_bytes * part // full if dim == 0 else bias_bytes
            split[r] += (total - bias_bytes) * part // full + bias_part
        counted += total
    whole = sizes[""] - counted
    if quantizer is not None:  # the scales transformers' sizes leave out, split with their weight
        modules = dict(model.named_modules())
        for name, extra in scale_bytes(model, quantization, dtype_bytes, quantizer).items():
            dim = split_dim(name, plan)
            if dim is None:
                whole += extra
                continue
            shape = list(modules[name].weight.shape)
            for r, part in enumerate(shard_sizes(shape[dim], n)):
                shape[dim] = part
                split[r] += scale_bytes_of(shape[0], shape[1], quantization, dtype_bytes) if part else 0
    return split, whole


def gpu_capacities(preset: Preset, n: int, gpus: str | list[int] | None) -> list[int]:
    """One GPU per rank: `--gpus 8x80GiB`, or one size for all N (`80GiB`), or the preset's GPU size."""
    if gpus is None:
        return [parse_size(preset.resources.gpu_memory)] * n
    capacities = parse_gpus(gpus) if isinstance(gpus, str) else list(gpus)
    if len(capacities) == 1:
        return capacities * n
    if len(capacities) != n:
        raise PlanError(f"--tensor-parallel {n} runs one rank per GPU, but --gpus names "
                        f"{len(capacities)} GPUs")
    return capacities


def plan_tensor_parallel(
    preset: Preset | str,
    n: int,
    gpus: str | list[int] | None = None,
    dtype: str | None = None,
    reserve: str = "1GiB",
    min_tokens: int | None = None,
    quantization: str | None = None,
) -> TensorParallelPlan:
    """Plan `preset` split over `n` GPUs; PlanError, naming the sizes, where n cannot split it or it
    does not fit."""
    p = load_preset(preset) if isinstance(preset, str) else preset
    quantization = quantization or p.quantization
    dtype = dtype or (p.dtype if p.dtype != "auto" else "float16")
    if dtype not in DTYPE_BYTES:
        raise PlanError(f"dtype must be one of {', '.join(DTYPE_BYTES)}; got {dtype!r}")
    if n < 1:
        raise PlanError(f"--tensor-parallel must be at least 1; got {n}")
    try:
        config = AutoConfig.for_model(p.architecture.model_type,
                                      **config_kwargs(p.architecture, p.context_length))
    except ValueError as exc:
        raise PlanError(f"{p.name}: transformers cannot build model_type {p.architecture.model_type!r}: "
                        f"{exc}") from exc
    problem = refusal(config, n)
    if problem:
        raise PlanError(f"{p.name}: {problem}")
    capacities = gpu_capacities(p, n, gpus)
    reserve_bytes = parse_size(reserve) if reserve not in ("0", "") else 0
    model = build_empty_model(p, dtype)
    quantizer = quantizer_for(quantization, model)
    if quantizer is not None:
        quantizer.preprocess_model(model, dtype=getattr(torch, dtype))
    split, whole = rank_bytes(model, n, quantization, DTYPE_BYTES[dtype], quantizer)
    ranks = [RankPlan(rank=r, capacity=c, split=split[r], whole=whole, reserve=reserve_bytes)
             for r, c in enumerate(capacities)]
    kv_per_gpu = kv_heads_per_rank(model.config, n)
    a = p.architecture
    result = TensorParallelPlan(
        **ModelFacts.of(p, model, dtype, quantization, whole + sum(split)),
        kv_heads=a.num_key_value_heads, kv_heads_per_gpu=kv_per_gpu,
        kv_bytes_per_token_per_gpu=2 * a.num_hidden_layers * kv_per_gpu * a.head_dim * DTYPE_BYTES[dtype],
        ranks=ranks, working=working_sizes(config), tp_plan=dict(model.tp_plan),
    )
    short = [r for r in ranks if r.weights + r.reserve > r.capacity]
    if short:
        r = max(short, key=lambda g: g.weights)
        raise PlanError(
            f"{p.name} in {dtype}{' with ' + quantization + ' weights' if quantizer else ''} over {n} GPUs "
            f"needs {gib(r.weights)} of weights on GPU {r.rank} beside a {reserve} reserve, more than its "
            f"{gib(r.capacity)}; use more or larger GPUs"
            + (f" (sizes that work: {', '.join(map(str, result.working))})"
               if len(result.working) > 1 else "")
        )
    want = min_tokens if min_tokens is not None else min(p.context_length, 2048)
    if result.tokens_fit < want:
        raise PlanError(
            f"{p.name} in {dtype} over {n} GPUs: the weights fit, but only {result.tokens_fit:,} tokens "
            f"of KV cache ({result.kv_bytes_per_token_per_gpu:,} bytes each per GPU) fit beside them; "
            f"at least {want:,} are needed. Use more or larger GPUs."
        )
    return result
