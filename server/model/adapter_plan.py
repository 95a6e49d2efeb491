"""The memory of N LoRA adapters of rank r, for `python -m server.plan --adapters N --adapter-rank r`.

A LoRA adapter adds two matrices to each module it targets: A (r x in) and B (out x r), so
r x (in + out) numbers per targeted linear layer. peft keeps adapter weights in float32 when the
model is in float16/bfloat16 (`autocast_adapter_dtype`, its default), so they are counted at 4
bytes each, wherever the layer they belong to is placed. Which modules an adapter targets depends
on how it was trained; the default is peft's own default for the model type (q_proj and v_proj
for Llama and Mistral), or every linear layer of the decoder where peft has none. Each adapter is
held twice: peft's own matrices, and the engine's copy of every LoRA layer's adapters stacked side
by side for the mixed-adapter forward (server/adapters/runtime.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.errors import PlanError
from server.units import gib

ADAPTER_DTYPE_BYTES = 4  # peft's autocast_adapter_dtype keeps LoRA weights in float32
ALL_LINEAR = "all-linear"
RESIDENT_COPIES = 2  # peft's matrices and the engine's stacked copy


@dataclass(frozen=True)
class AdapterPlan:
    count: int
    rank: int
    targets: tuple[str, ...]
    bytes_per_layer: dict[int, int]  # one adapter, by decoder layer index
    modules: int  # targeted modules in one adapter

    @property
    def bytes_each(self) -> int:
        return sum(self.bytes_per_layer.values())

    @property
    def total_bytes(self) -> int:
        return RESIDENT_COPIES * self.count * self.bytes_each

    def render(self) -> str:
        mib = 2**20
        return (f"adapters: {self.count} x LoRA rank {self.rank} on {','.join(self.targets)} "
                f"({self.modules} modules): {self.bytes_each / mib:.2f} MiB each, held twice (peft's and "
                f"the stacked copy): {self.total_bytes / mib:.2f} MiB in all (float32, counted in each "
                f"GPU's weights below)")


def default_targets(model_type: str) -> tuple[str, ...]:
    """peft's default LoRA target modules for this model type, else every decoder linear layer."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    return tuple(PEFT_DEFAULTS.get(model_type) or (ALL_LINEAR,))


def _layer_index(name: str) -> int | None:
    m = re.search(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def adapter_plan(model: Any, count: int, rank: int, targets: Sequence[str] | None = None) -> AdapterPlan:
    """Bytes of `count` adapters of `rank` on `model` (meta weights are fine: only shapes are read).

    A module is targeted when its name's last part is in `targets` (peft's matching for a list of
    names); `all-linear` targets every linear layer inside the decoder layers.
    """
    import torch

    if count < 0 or rank < 1:
        raise ValueError("--adapters must be >= 0 and --adapter-rank >= 1")
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    names = tuple(targets) if targets else default_targets(model_type)
    per_layer: dict[int, int] = {}
    modules = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        layer = _layer_index(name)
        if layer is None:  # the LM head and anything outside the decoder stack
            continue
        if ALL_LINEAR not in names and name.rsplit(".", 1)[-1] not in names:
            continue
        per_layer[layer] = per_layer.get(layer, 0) + rank * (module.in_features + module.out_features) \
            * ADAPTER_DTYPE_BYTES
        modules += 1
    if count and not modules:
        raise ValueError(f"no linear layer of this {model_type or 'model'} is named "
                         f"{', '.join(names)} (--adapter-targets)")
    return AdapterPlan(count, rank, names, per_layer, modules)


def place_adapters(model: Any, gpus: list[Any], layer_gpu: dict[int, int], count: int, rank: int,
                   targets: Sequence[str] | None) -> AdapterPlan | None:
    """Add `count` adapters to each GPU's weights, on the GPU of the layer each matrix belongs to;
    PlanError when they are malformed or do not fit beside the weights."""

    if not count:
        return None
    try:
        lora = adapter_plan(model, count, rank, targets)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    for i, size in lora.bytes_per_layer.items():
        gpus[layer_gpu.get(i, 0)].weights += RESIDENT_COPIES * count * size
    for g in gpus:
        if g.weights + g.reserve > g.capacity:
            raise PlanError(f"{count} adapters of rank {rank} ({gib(lora.total_bytes)}) do not fit: GPU "
                            f"{g.index} would hold {gib(g.weights)} of weights and adapters beside a "
                            f"{gib(g.reserve)} reserve on {gib(g.capacity)}")
    return lora


def add_arguments(parser: Any) -> None:
    """`python -m server.plan`'s adapter options."""
    parser.add_argument("--adapters", type=int, default=0, help="LoRA adapters loaded at once")
    parser.add_argument("--adapter-rank", type=int, default=8, help="their rank r (default 8)")
    parser.add_argument("--adapter-targets", help="modules they target, comma-separated "
                        "(default: peft's for the model type; all-linear: every decoder linear)")


def from_arguments(args: Any) -> dict[str, Any]:
    """The `plan()` keywords for those options."""
    targets = args.adapter_targets.split(",") if args.adapter_targets else None
    return {"adapters": args.adapters, "adapter_rank": args.adapter_rank, "adapter_targets": targets}
