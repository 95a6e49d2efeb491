"""Weight-only quantization at load time (`QUANTIZATION=int8|int4|fp8`), through transformers'
quantizers, so each weight is quantized as it arrives (a model never needs its full-precision size
in memory) and accelerate's `device_map`/`max_memory` placement sizes the quantized weights (the
planner uses the same quantizers):
- `int8`: torchao's int8 weight-only, symmetric, one scale per group of `INT8_GROUP` weights along
  the input (the layout of GGUF's Q8_0, which uses groups of 32): per output row, as quanto's qint8
  does it, one outlier weight coarsens its whole row (measured: docs/architecture/decisions.md).
- `int4` and `fp8`: optimum-quanto (`QuantoConfig`; int4 in groups of 128). On the CPU, int4
  weights are unpacked by `unpack_bits` (see `use_pytorch_unpack`).
The embeddings and the LM head stay in the model's dtype (both libraries' default): they are a
small share of a large model's weights and the LM head decides every token.

Whatever cannot be served is refused before loading, with the reason (`check`), never ignored.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from server.config import QUANTIZATIONS, ConfigError

# Our setting -> quanto's weight type name in transformers' QuantoConfig (int8 goes to torchao).
QUANTO_WEIGHTS = {"int4": "int4", "fp8": "float8"}
# Bytes per weight element once quantized (int4 packs two per byte); scales come on top.
ELEMENT_BYTES = {"int8": 1.0, "int4": 0.5, "fp8": 1.0}
INT8_GROUP = 64  # weights per int8 scale, along the input dimension


class QuantizationError(ConfigError):
    """A quantization this machine or this model cannot serve; the message says why."""


@dataclass(frozen=True)
class Support:
    ok: bool
    reason: str = ""


def quanto_available() -> bool:
    return importlib.util.find_spec("optimum.quanto") is not None


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def library(quantization: str) -> str:
    """The library that quantizes this setting, as the requirements name it."""
    return "torchao" if quantization == "int8" else "optimum-quanto"


def library_available(quantization: str) -> bool:
    return torchao_available() if quantization == "int8" else quanto_available()


def support(quantization: str, *, cuda: bool, gguf: bool = False,
            capability: tuple[int, int] | None = None) -> Support:
    """Whether `quantization` can be served here (machine and checkpoint format), and if not, why."""
    if quantization not in QUANTIZATIONS:
        return Support(False, f"QUANTIZATION must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    if quantization == "none":
        return Support(True)
    if not library_available(quantization):
        return Support(False, f"QUANTIZATION={quantization} needs {library(quantization)} (requirements.txt)")
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
    """transformers' quantization config for `from_pretrained`, or None for full precision. `skip`:
    more modules to keep in full precision (names or name parts, e.g. `down_proj`) besides the LM
    head."""
    if quantization == "none":
        return None
    keep = ("lm_head", *skip)
    if quantization == "int8":
        from torchao.quantization import Int8WeightOnlyConfig
        from torchao.quantization.granularity import PerGroup
        from transformers import TorchAoConfig

        # torchao's quantizer matches parameter names from their start: allow any prefix
        extra = {"modules_to_not_convert": [rf"(?:.*\.)?{re.escape(n)}" for n in keep]} if skip else {}
        return TorchAoConfig(Int8WeightOnlyConfig(granularity=PerGroup(INT8_GROUP)), **extra)
    from transformers import QuantoConfig

    extra = {"modules_to_not_convert": list(keep)} if skip else {}
    return QuantoConfig(weights=QUANTO_WEIGHTS[quantization], **extra)


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """quanto's packed weights (`8 // bits` values per byte, the lowest bits first) as one uint8 per
    value: the value at each bit position becomes a block along the first dimension, in quanto's
    layout (`quanto::unpack`)."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device).view(-1, *[1] * packed.dim())
    return ((packed.unsqueeze(0) >> shifts) & (2**bits - 1)).flatten(0, 1)


@functools.cache
def use_pytorch_unpack() -> torch.library.Library:
    """Serve quanto's `unpack` on the CPU with `unpack_bits` instead of quanto's C++ extension.

    quanto compiles that extension on first use: about a minute, and only where a C++ compiler,
    ninja, Python's headers and a writable venv exist (the image has none of them). Its unpacking
    is no faster than these PyTorch operations (docs/architecture/decisions.md). The registration
    lives as long as the returned library object, which the cache keeps."""
    import optimum.quanto  # noqa: F401  (defines quanto::unpack and registers the C++ kernel)

    library = torch.library.Library("quanto", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Overriding a previously registered kernel"
        library.impl("unpack", unpack_bits, "CPU")
    return library


def empty_model(path: str, *, trust_remote_code: bool = False) -> nn.Module:
    """The model at `path` built from its config on the meta device: names and shapes, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def ungroupable_linears(model: nn.Module) -> tuple[str, ...]:
    """Linear layers whose input size is not a multiple of INT8_GROUP: torchao cannot group them,
    so int8 keeps them in full precision (rare: hidden and MLP sizes are multiples of 64 in the
    models we know). The loader and the planner both ask, so plans match what is served."""
    return tuple(name for name, m in model.named_modules()
                 if isinstance(m, nn.Linear) and m.in_features % INT8_GROUP)


def is_quantized_weight(weight: Any) -> bool:
    """A weight held by a quantization library (torchao's tensor subclasses report the float dtype
    they stand for, so the dtype alone does not tell)."""
    return type(weight) not in (nn.Parameter, torch.Tensor)


def quantized_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The modules whose weights a quantization library holds: quanto's QLinear and friends, and
    linear layers whose weight torchao replaced."""
    quanto: tuple[type, ...] = ()
    if quanto_available():
        from optimum.quanto import QModuleMixin

        quanto = (QModuleMixin,)
    for name, module in model.named_modules():
        if isinstance(module, quanto) or (
                isinstance(module, nn.Linear) and is_quantized_weight(module.weight)):
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
    """Storage a tensor really holds: quanto's and torchao's weights are wrapper subclasses whose
    bytes live in inner tensors (int8/packed int4 data, scales, shifts); `element_size()` would
    report float. A tensor-parallel DTensor counts this rank's shard."""
    local = getattr(t, "to_local", None)
    if local is not None:
        return _tensor_bytes(local())
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
