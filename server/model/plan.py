"""Sharding plan for a preset: how accelerate would place it on N GPUs, and what is left for KV cache.

The model is built on accelerate's empty (meta) weights from the preset's architecture numbers, so
a 70B model is planned in seconds with no download and no GPU. The device map comes from the same
calls transformers makes for `device_map="auto"`: `get_balanced_memory` then `infer_auto_device_map`
(accelerate's, as transformers wraps them), with the model's own `_no_split_modules`. MPT and
Falcon are built with transformers' native MptConfig / FalconConfig (no remote code). Nothing may
spill to CPU or disk: a plan that needs that fails.

    python -m server.plan --preset llama-2-70b-chat --gpus 2x80GiB [--dtype float16]
    python -m server.plan --preset llama-2-70b-chat --gpus 1x80GiB --quantization int8

(The command line is server/plan.py; `--tensor-parallel N` plans the split of server/model/tp_plan.py.)

With `--quantization` the meta model goes through the same quantizer `from_pretrained` uses
(torchao's for int8, quanto's for int4/fp8), so placement and sizes are the server's (quantized
weights at 1 or 0.5 byte, plus their scales; embeddings and LM head stay in the dtype). The KV
cache stays in the dtype.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from server.errors import PlanError
from server.model.adapter_plan import place_adapters
from server.presets import Architecture, Preset, load_preset
from server.units import GIB, gib

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
@dataclass
class GpuPlan:
    index: int
    capacity: int
    weights: int = 0
    layers: int = 0
    reserve: int = 0

    @property
    def free(self) -> int:
        return max(self.capacity - self.weights - self.reserve, 0)


@dataclass
class ModelFacts:
    """What every plan says of the model it places: preset, architecture, dtype and sizes."""

    preset: str
    model_type: str
    config_class: str
    dtype: str
    quantization: str
    parameters: int
    weight_bytes: int  # the whole model, as on one GPU
    context_length: int

    @staticmethod
    def of(preset: Preset, model: Any, dtype: str, quantization: str, weight_bytes: int) -> dict[str, Any]:
        """The fields, read from the preset and the empty model (keyword arguments for a plan)."""
        return {"preset": preset.name, "model_type": preset.architecture.model_type,
                "config_class": type(model.config).__name__, "dtype": dtype, "quantization": quantization,
                "parameters": sum(t.numel() for t in model.parameters()), "weight_bytes": weight_bytes,
                "context_length": preset.context_length}


@dataclass
class Plan(ModelFacts):
    kv_bytes_per_token: int
    gpus: list[GpuPlan]
    device_map: dict[str, Any] = field(default_factory=dict)
    adapters: Any = None  # adapter_plan.AdapterPlan when --adapters was given

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        return self.kv_bytes_per_token // max(sum(g.layers for g in self.gpus), 1)

    @property
    def tokens_fit(self) -> int:
        """Tokens of KV cache that fit: each GPU holds the cache of its own layers, so the tightest
        GPU decides."""
        per_layer = self.kv_bytes_per_token_per_layer
        fits = [g.free // (g.layers * per_layer) for g in self.gpus if g.layers]
        return min(fits) if fits else 0

    def render(self) -> str:
        lines = [
            f"preset {self.preset}: {self.model_type} ({self.config_class}), {self.parameters / 1e9:.2f}B "
            f"parameters, {self.dtype}{self._quantized}, weights {gib(self.weight_bytes)} "
            f"({self.weight_bytes / 1e9:.1f} GB)",
            *([self.adapters.render()] if self.adapters and self.adapters.count else []),
            f"{'gpu':>4} {'capacity':>11} {'weights':>11} {'layers':>6} {'reserve':>9} {'free for KV':>11}",
        ]
        for g in self.gpus:
            lines.append(
                f"{g.index:>4} {gib(g.capacity):>11} {gib(g.weights):>11} {g.layers:>6} "
                f"{gib(g.reserve):>9} {gib(g.free):>11}"
            )
        tokens = self.tokens_fit
        lines += [
            f"KV cache: {self.kv_bytes_per_token:,} bytes per token "
            f"({self.kv_bytes_per_token / 1024:.1f} KiB, all layers)",
            f"tokens that fit in the KV cache: {tokens:,} "
            f"(= {tokens / self.context_length:.1f} sequences of the full "
            f"{self.context_length:,}-token context)",
            "serve it with the same placement: DEVICE_MAP=auto MAX_MEMORY="
            + ",".join(f"{g.index}={(g.capacity - g.reserve) // 2**20}MiB" for g in self.gpus)
            + (f" QUANTIZATION={self.quantization}" if self.quantization != "none" else ""),
        ]
        return "\n".join(lines)

    @property
    def _quantized(self) -> str:
        return f" weights quantized to {self.quantization}" if self.quantization != "none" else ""


def parse_size(text: str) -> int:
    from accelerate.utils import convert_file_size_to_int

    try:
        size = convert_file_size_to_int(text.strip())
    except ValueError as exc:
        raise PlanError(f"not a memory size: {text!r} (use e.g. 24GiB or 80GB)") from exc
    if size <= 0:
        raise PlanError(f"memory size must be positive: {text!r}")
    return size


def parse_gpus(spec: str) -> list[int]:
    """`2x24GiB`, `1x80GiB`, or a list `24GiB,48GiB` -> bytes per GPU."""
    sizes: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"(\d+)\s*[xX*]\s*(.+)", part)
        count, size = (int(m.group(1)), m.group(2)) if m else (1, part)
        if count < 1:
            raise PlanError(f"GPU count must be at least 1: {part!r}")
        sizes += [parse_size(size)] * count
    if not sizes:
        raise PlanError(f"no GPUs in {spec!r}; use e.g. --gpus 2x24GiB")
    return sizes


def config_kwargs(arch: Architecture, context_length: int) -> dict[str, Any]:
    """Our normalised numbers -> the keyword names of transformers' config class for model_type.

    MPT and Falcon are native in transformers (MptConfig, FalconConfig), with their own names.
    """
    a = arch
    if a.model_type == "mpt":
        if a.intermediate_size % a.hidden_size:
            raise PlanError("mpt: intermediate_size must be a multiple of hidden_size (expansion_ratio)")
        if a.num_key_value_heads != a.num_attention_heads:
            raise PlanError("mpt has no grouped-query attention: num_key_value_heads must equal heads")
        kw: dict[str, Any] = dict(
            d_model=a.hidden_size, n_heads=a.num_attention_heads, n_layers=a.num_hidden_layers,
            expansion_ratio=a.intermediate_size // a.hidden_size, vocab_size=a.vocab_size,
            max_seq_len=context_length,
        )
    elif a.model_type == "falcon":
        kw = dict(
            hidden_size=a.hidden_size, num_hidden_layers=a.num_hidden_layers,
            num_attention_heads=a.num_attention_heads, num_kv_heads=a.num_key_value_heads,
            multi_query=a.num_key_value_heads == 1, ffn_hidden_size=a.intermediate_size,
            vocab_size=a.vocab_size, max_position_embeddings=context_length,
        )
    elif a.model_type == "t5":  # instructor: a T5 encoder (embedding presets)
        kw = dict(
            d_model=a.hidden_size, num_layers=a.num_hidden_layers, num_heads=a.num_attention_heads,
            d_kv=a.head_dim, d_ff=a.intermediate_size, vocab_size=a.vocab_size,
        )
    else:  # llama, mistral, phi3, qwen2, bert, ...: the common names
        kw = dict(
            hidden_size=a.hidden_size, num_hidden_layers=a.num_hidden_layers,
            num_attention_heads=a.num_attention_heads, num_key_value_heads=a.num_key_value_heads,
            intermediate_size=a.intermediate_size, vocab_size=a.vocab_size,
            max_position_embeddings=context_length,
        )
    kw["tie_word_embeddings"] = a.tie_word_embeddings
    kw.update(a.config_overrides)
    return kw


def build_empty_model(preset: Preset, dtype: str) -> Any:
    """The model on the meta device: real module tree and parameter shapes, no memory."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTextEncoding

    try:
        config = AutoConfig.for_model(
            preset.architecture.model_type, **config_kwargs(preset.architecture, preset.context_length)
        )
    except ValueError as exc:
        raise PlanError(f"{preset.name}: transformers cannot build model_type "
                        f"{preset.architecture.model_type!r}: {exc}") from exc
    # an embedding model is its encoder alone (T5: no decoder), with no LM head
    auto = AutoModelForTextEncoding if preset.kind == "embedding" else AutoModelForCausalLM
    with init_empty_weights():
        model = auto.from_config(config, dtype=getattr(torch, dtype))
    model.tie_weights()
    return model


def kv_bytes_per_token(arch: Architecture, dtype: str, model: Any = None) -> int:
    """K and V for every layer: 2 x layers x kv_heads x head_dim x bytes. Falcon-7B's multi-query
    attention keeps one KV head; MPT keeps all heads."""
    kv_heads = arch.num_key_value_heads
    cfg = getattr(model, "config", None)
    if arch.model_type == "falcon" and cfg is not None and not cfg.new_decoder_architecture:
        kv_heads = 1 if cfg.multi_query else arch.num_attention_heads
    return 2 * arch.num_hidden_layers * kv_heads * arch.head_dim * DTYPE_BYTES[dtype]


def _layer_index(name: str) -> int | None:
    m = re.search(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def auto_device_map(model: Any, max_memory: dict[int, int], no_split: list[str], torch_dtype: Any,
                    quantizer: Any = None) -> dict:
    """The device map `from_pretrained(device_map="auto", max_memory=...)` computes.

    transformers 5 wraps accelerate's `get_balanced_memory` + `infer_auto_device_map` in its own
    `_get_device_map` (the function from_pretrained calls); use it where present so the plan is the
    server's actual placement, else accelerate's public functions the same way.
    """
    try:
        from transformers.integrations.accelerate import _get_device_map
    except ImportError:
        _get_device_map = None
    if _get_device_map is not None:
        return dict(_get_device_map(model, "auto", dict(max_memory), quantizer))
    if quantizer is not None:
        raise PlanError("planning a quantized model needs transformers' own device-map code (>= 5)")
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    balanced = get_balanced_memory(model, max_memory=dict(max_memory), no_split_module_classes=no_split,
                                   dtype=torch_dtype, low_zero=False)
    return infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split,
                                 dtype=torch_dtype)


def quantizer_for(quantization: str, model: Any) -> Any:
    """transformers' quantizer for the empty `model`, as from_pretrained builds it (int8: ungroupable
    layers kept float, as the loader does), or None; without its no-CPU-offload check."""
    from server.model import quantize

    if quantization not in quantize.QUANTIZATIONS:
        choices = ", ".join(quantize.QUANTIZATIONS)
        raise PlanError(f"quantization must be one of {choices}; got {quantization!r}")
    if quantization == "none":
        return None
    if not quantize.library_available(quantization):
        raise PlanError(f"planning QUANTIZATION={quantization} needs {quantize.library(quantization)} "
                        "(requirements.txt)")
    from transformers.quantizers.auto import AutoHfQuantizer

    skip = quantize.ungroupable_linears(model) if quantization == "int8" else ()
    quantizer = AutoHfQuantizer.from_config(quantize.quantization_config(quantization, skip))
    quantizer.validate_environment = lambda *a, **k: None  # type: ignore[method-assign]
    return quantizer


def scale_bytes(model: Any, quantization: str, dtype_bytes: int, quantizer: Any) -> dict[str, int]:
    """Bytes of the scales (and shifts) per quantized linear layer, which transformers' sizes leave
    out: int8 (torchao) a scale and an int8 zero point per group of INT8_GROUP weights; int4
    (quanto) a scale and a shift per group of 128; fp8 (quanto) one scale per output row."""
    from torch import nn

    from server.model.quantize import quantized_modules

    if quantization == "int8":  # torchao swaps weights at load, not modules: ask what it will quantize
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)
                  and quantizer.param_needs_quantization(model, f"{n}.weight")]
    else:
        layers = list(quantized_modules(model))
    return {name: scale_bytes_of(*module.weight.shape, quantization, dtype_bytes) for name, module in layers}


def scale_bytes_of(rows: int, cols: int, quantization: str, dtype_bytes: int) -> int:
    """Scale bytes of one (rows x cols) quantized weight, or of one rank's slice of it (tp_plan.py)."""
    from server.model.quantize import INT8_GROUP

    if quantization == "int8":
        return rows * -(-cols // INT8_GROUP) * (dtype_bytes + 1)
    return rows * (2 * -(-cols // 128) if quantization == "int4" else 1) * dtype_bytes


def plan(
    preset: Preset | str,
    gpus: str | list[int],
    dtype: str | None = None,
    reserve: str = "1GiB",
    min_tokens: int | None = None,
    quantization: str | None = None,
    adapters: int = 0, adapter_rank: int = 8, adapter_targets: list[str] | None = None,  # LoRA memory
) -> Plan:
    """Plan `preset` on `gpus`; raise PlanError with an operator-readable reason when it cannot run."""
    from transformers.integrations.accelerate import compute_module_sizes

    # accelerate checks max_memory's GPUs against this machine's (none here): planning for GPUs we
    # do not have is the point, so its "device not available" warnings are noise.
    for name in ("accelerate.utils.modeling", "transformers.integrations.accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    p = load_preset(preset) if isinstance(preset, str) else preset
    quantization = quantization or p.quantization
    dtype = dtype or (p.dtype if p.dtype != "auto" else "float16")
    if dtype not in DTYPE_BYTES:
        raise PlanError(f"dtype must be one of {', '.join(DTYPE_BYTES)}; got {dtype!r}")
    capacities = parse_gpus(gpus) if isinstance(gpus, str) else list(gpus)
    reserve_bytes = parse_size(reserve) if reserve not in ("0", "") else 0
    model = build_empty_model(p, dtype)
    quantizer = quantizer_for(quantization, model)
    if quantizer is not None:
        quantizer.preprocess_model(model, dtype=getattr(__import__("torch"), dtype))
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    torch_dtype = getattr(__import__("torch"), dtype)

    # What each GPU may hold for weights: its capacity less the reserve (CUDA context, activations).
    budget = {i: c - reserve_bytes for i, c in enumerate(capacities)}
    if min(budget.values()) <= 0:
        raise PlanError(f"the reserve ({reserve}) leaves no memory on a {gib(min(capacities))} GPU")
    device_map = auto_device_map(model, budget, no_split, torch_dtype, quantizer)
    sizes = {k: int(v) for k, v in compute_module_sizes(model, hf_quantizer=quantizer)[0].items()}
    if quantizer is not None:
        for name, extra in scale_bytes(model, quantization, DTYPE_BYTES[dtype], quantizer).items():
            parts = name.split(".")
            for i in range(len(parts) + 1):
                sizes[".".join(parts[:i])] = sizes.get(".".join(parts[:i]), 0) + extra
    total = sizes[""]
    offloaded = sorted({str(d) for d in device_map.values() if not isinstance(d, int)})
    if offloaded:
        spilled = sum(sizes[n] for n, d in device_map.items() if not isinstance(d, int))
        need = -(-total // GIB)
        raise PlanError(
            f"{p.name} in {dtype}{' with ' + quantization + ' weights' if quantizer else ''} needs "
            f"{gib(total)} of weights ({gib(spilled)} would spill to "
            f"{'/'.join(offloaded)}); {len(capacities)} GPU(s) of {', '.join(gib(c) for c in capacities)} "
            f"hold at most {gib(sum(budget.values()))} after a {reserve} reserve each. "
            f"Use more or larger GPUs (at least {need} GiB of weights in all plus KV cache)."
        )
    per_gpu = [GpuPlan(index=i, capacity=c, reserve=reserve_bytes) for i, c in enumerate(capacities)]
    layer_gpu: dict[int, int] = {}
    for name, device in device_map.items():
        per_gpu[device].weights += sizes.get(name, 0)  # a tied weight counts once, where it is owned
        idx = _layer_index(name)
        if idx is not None:
            layer_gpu[idx] = device
        elif name == "" or name.count(".") < 2:  # whole model / whole decoder stack on one GPU
            for i in range(p.architecture.num_hidden_layers):
                layer_gpu.setdefault(i, device)
    for i in range(p.architecture.num_hidden_layers):
        per_gpu[layer_gpu.get(i, 0)].layers += 1

    lora = place_adapters(model, per_gpu, layer_gpu, adapters, adapter_rank, adapter_targets)
    result = Plan(
        **ModelFacts.of(p, model, dtype, quantization, total),
        kv_bytes_per_token=kv_bytes_per_token(p.architecture, dtype, model),
        gpus=per_gpu, device_map=dict(device_map), adapters=lora,
    )
    want = min_tokens if min_tokens is not None else min(p.context_length, 2048)
    if result.tokens_fit < want:
        raise PlanError(
            f"{p.name} in {dtype}: the weights fit, but only {result.tokens_fit:,} tokens of KV cache "
            f"({result.kv_bytes_per_token:,} bytes each) fit beside them; at least {want:,} are needed. "
            f"Use more or larger GPUs."
        )
    return result
