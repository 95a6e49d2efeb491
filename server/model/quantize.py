"""Weight-only quantization at load time through optimum-quanto (`QUANTIZATION=int8|int4|fp8`).

Why quanto through transformers' `QuantoConfig`: the linear layers are swapped for quanto's
`QLinear` before the weights load, and each weight is quantized as it arrives, so a model never
needs its full-precision size in memory, and accelerate's `device_map`/`max_memory` placement
sizes the quantized weights (the planner uses the same quantizer). The embeddings and the LM head
stay in the model's dtype (transformers' default for quanto): they are a small share of a large
model's weights and the LM head decides every token.

Whatever cannot be served is refused before loading, with the reason (`check`), never ignored.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from server.config import QUANTIZATIONS, ConfigError

# Our setting -> quanto's weight type name in transformers' QuantoConfig.
QUANTO_WEIGHTS = {"int8": "int8", "int4": "int4", "fp8": "float8"}
# Bytes per weight element once quantized (int4 packs two per byte); scales come on top.
ELEMENT_BYTES = {"int8": 1.0, "int4": 0.5, "fp8": 1.0}


class QuantizationError(ConfigError):
    """A quantization this machine or this model cannot serve; the message says why."""


@dataclass(frozen=True)
class Support:
    ok: bool
    reason: str = ""


def quanto_available() -> bool:
    return importlib.util.find_spec("optimum.quanto") is not None


def support(quantization: str, *, cuda: bool, gguf: bool = False,
            capability: tuple[int, int] | None = None) -> Support:
    """Whether `quantization` can be served here (machine and checkpoint format), and if not, why."""
    if quantization not in QUANTIZATIONS:
        return Support(False, f"QUANTIZATION must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    if quantization == "none":
        return Support(True)
    if not quanto_available():
        return Support(False, f"QUANTIZATION={quantization} needs optimum-quanto (requirements.txt)")
    if gguf:
        return Support(False, "a GGUF checkpoint is already quantized and is dequantized on load; "
                              "convert it to a safetensors folder (python -m server.model.convert) "
                              "to quantize it with QUANTIZATION")
    if quantization == "fp8":
        if not hasattr(torch, "float8_e4m3fn"):
            return Support(False, "this torch build has no float8_e4m3fn dtype")
        if not cuda:
            return Support(False, "fp8 weights have no CPU kernel: quanto converts every fp8 weight back "
                                  "to float in Python at each forward (about 5x slower than int8 "
                                  "here); use QUANTIZATION=int8 on the CPU")
        if capability is not None and capability < (8, 0):
            return Support(False, f"fp8 weights need a GPU of compute capability 8.0 or newer "
                                  f"(this one is {capability[0]}.{capability[1]}); use int8")
    return Support(True)


def check(quantization: str, *, cuda: bool, gguf: bool = False) -> None:
    """Raise QuantizationError unless `quantization` can be served on this machine."""
    capability = torch.cuda.get_device_capability(0) if cuda and torch.cuda.is_available() else None
    result = support(quantization, cuda=cuda, gguf=gguf, capability=capability)
    if not result.ok:
        raise QuantizationError(result.reason)


def quantization_config(quantization: str, skip: tuple[str, ...] = ()) -> Any | None:
    """transformers' QuantoConfig for `from_pretrained`, or None for full precision. `skip`: more
    modules to keep in full precision (names or name parts, e.g. `down_proj`) besides the LM head."""
    if quantization == "none":
        return None
    from transformers import QuantoConfig

    extra = {"modules_to_not_convert": ["lm_head", *skip]} if skip else {}
    return QuantoConfig(weights=QUANTO_WEIGHTS[quantization], **extra)


def quantized_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The modules whose weights quanto holds (QLinear and friends)."""
    if not quanto_available():
        return
    from optimum.quanto import QModuleMixin

    for name, module in model.named_modules():
        if isinstance(module, QModuleMixin):
            yield name, module


def _outside_inference_mode(module: nn.Module) -> None:
    """Run the module's forward with autograd off but outside `torch.inference_mode`.

    quanto's int4 weights (WeightQBitsTensor) fail under inference mode ("Cannot set
    version_counter for inference tensor": transposing the weight makes a view of it), and the
    engine runs its steps under inference mode. Inputs that are inference tensors are fine to read
    in normal mode; the output is an ordinary tensor."""
    inner = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_inference_mode_enabled():
            return inner(*args, **kwargs)
        with torch.inference_mode(False), torch.no_grad():
            return inner(*args, **kwargs)

    module.forward = forward


def prepare(model: nn.Module, quantization: str) -> int:
    """After loading: make the quantized layers usable by the engine; returns how many there are."""
    layers = [m for _, m in quantized_modules(model)]
    if quantization == "int4":
        for module in layers:
            _outside_inference_mode(module)
    return len(layers)


def _tensor_bytes(t: torch.Tensor) -> int:
    """Storage a tensor really holds: quanto's weights are wrapper subclasses whose bytes live in
    inner tensors (int8/packed int4 data, scales, shifts); `element_size()` would report float."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as stored (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) in seen or t.device.type == "meta":
            continue
        seen.add(id(t))
        total += _tensor_bytes(t)
    return total
