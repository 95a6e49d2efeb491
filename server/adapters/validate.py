"""Check an adapter folder against the base model before the model is touched.

Reads `adapter_config.json` and the safetensors header (shapes only, no tensor data), and refuses,
with the reason, what peft would load wrongly or fail on mid-way: another adapter type, DoRA (no
mixed batches), modules the base model does not have (trained for another architecture), shapes
that do not fit (another width), a missing or corrupt file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from torch import nn

from server.adapters.paths import CONFIG_FILE, WEIGHTS_FILE
from server.adapters.types import AdapterError

_PREFIX = "base_model.model."


@dataclass(frozen=True)
class AdapterSpec:
    """What validation learned about a folder: its LoRA rank and the base modules it changes."""

    path: Path
    rank: int
    modules: tuple[str, ...]
    config: dict


def _invalid(label: str, reason: str) -> AdapterError:
    return AdapterError("invalid_adapter", f"adapter {label!r} cannot be used with this model: {reason}")


def read_config(folder: Path, label: str) -> dict:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise _invalid(label, f"{CONFIG_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise _invalid(label, f"{CONFIG_FILE} is not valid JSON") from None
    if not isinstance(config, dict):
        raise _invalid(label, f"{CONFIG_FILE} is not a JSON object")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise _invalid(label, f"only LoRA adapters are served (peft_type {config.get('peft_type')!r})")
    if config.get("use_dora"):
        raise _invalid(label, "DoRA adapters cannot share a batch with other adapters")
    if config.get("lora_bias"):
        raise _invalid(label, "adapters with a lora_B bias (lora_bias) are not served")
    if config.get("modules_to_save"):
        raise _invalid(label, "adapters that replace whole modules (modules_to_save) are not served")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise _invalid(label, f"rank r={rank!r} is not a positive integer")
    return config


def _weight_shapes(folder: Path, label: str) -> dict[str, tuple[int, ...]]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise _invalid(label, f"{WEIGHTS_FILE} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # safetensors raises its own error types for a bad header
        raise _invalid(label, f"{WEIGHTS_FILE} is corrupt (not a safetensors file)") from None


def _module_shape(module: nn.Module) -> tuple[int, int] | None:
    """(out_features, in_features) of a linear-like base module, however peft may wrap it."""
    base = getattr(module, "base_layer", module)
    if isinstance(base, nn.Linear):
        return base.out_features, base.in_features
    weight = getattr(base, "weight", None)
    if weight is not None and weight.dim() == 2 and type(base).__name__ == "Conv1D":
        return int(weight.shape[1]), int(weight.shape[0])
    return None


def check_adapter(folder: Path, model: nn.Module, label: str) -> AdapterSpec:
    """Validate `folder` against `model` (the base model, peft layers or not); AdapterError if not."""
    config = read_config(folder, label)
    shapes = _weight_shapes(folder, label)
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        name = key.removeprefix(_PREFIX)
        for part in (".lora_A.", ".lora_B."):
            if part in name:
                modules.setdefault(name.split(part)[0], {})[part.strip(".")] = shape
    if not modules:
        raise _invalid(label, f"{WEIGHTS_FILE} holds no LoRA weights")
    missing = [m for m in modules if _get(model, m) is None]
    if missing:
        raise _invalid(label, f"it targets modules this model does not have ({_few(missing)}): "
                       "it was trained for another base model")
    for name, ab in sorted(modules.items()):
        a, b = ab.get("lora_A"), ab.get("lora_B")
        if a is None or b is None or len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise _invalid(label, f"{name}: lora_A/lora_B are incomplete or disagree on the rank")
        want = _module_shape(_get(model, name))
        if want is None:
            raise _invalid(label, f"{name} is not a linear layer in this model")
        if (b[0], a[1]) != want:
            raise _invalid(label, f"{name} expects {a[1]} inputs and {b[0]} outputs but this model's layer "
                           f"has {want[1]} and {want[0]}: it was trained for another base model")
    return AdapterSpec(folder, int(config["r"]), tuple(sorted(modules)), config)


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
