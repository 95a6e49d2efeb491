"""The model side of adapters: peft's LoRA layers inside the served model, and which adapter each
row of a forward pass uses.

The first adapter wraps the loaded model with peft (`PeftModel.from_pretrained`); its LoRA layers
live inside the model's own modules, so the engine keeps calling the model as before. Each LoRA
layer carries one forward pre-hook that passes peft's mixed-batch argument `adapter_names` (one
name per row, `__base__` for the base model) from a thread-local set by `use_adapters`: rows with
different adapters and base rows run in one forward, and a forward on a thread that set nothing
(prompt scoring, a prefix for the base model) runs the base model. The CPU kernels of
server/model/cpu_kernels.py stay on the base layers that peft wraps.

Every method that changes the model (`load`, `delete`, `merge`) must run while no forward pass
does: the manager calls them through the engine loop (`EngineLoop.call`), between steps.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn

BASE_ROW = "__base__"  # peft's name for "no adapter" in adapter_names
_local = threading.local()


@contextlib.contextmanager
def use_adapters(keys: Sequence[str | None] | str | None) -> Iterator[None]:
    """Forward passes on this thread use these adapters: one key per row, one key for every row
    (a `generate` call, whatever its expanded batch size), or None for the base model."""
    if keys is not None and not isinstance(keys, str):
        keys = None if all(k is None for k in keys) else [k or BASE_ROW for k in keys]
    previous = getattr(_local, "keys", None)
    _local.keys = keys
    try:
        yield
    finally:
        _local.keys = previous


def _inject(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    keys = getattr(_local, "keys", None)
    x = args[0] if args else kwargs["x"]
    if keys is None:
        kwargs["adapter_names"] = [BASE_ROW] * x.shape[0]
    elif isinstance(keys, str):
        kwargs["adapter_names"] = [keys] * x.shape[0]
    else:
        kwargs["adapter_names"] = keys
    return args, kwargs


class LoraRuntime:
    """peft's LoRA layers in one loaded model. Not thread-safe: see the module docstring."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model  # the served model; peft edits its modules in place
        self.peft: PeftModel | None = None
        self._hooked: set[int] = set()

    @property
    def keys(self) -> list[str]:
        return list(self.peft.peft_config) if self.peft is not None else []

    def load(self, key: str, path: str) -> None:
        with _mutating():
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=key, is_trainable=False)
            else:
                self.peft.load_adapter(path, adapter_name=key, is_trainable=False)
            self._settle()

    def delete(self, key: str) -> None:
        if self.peft is None or key not in self.peft.peft_config:
            return
        with _mutating():
            self.peft.delete_adapter(key)
            self._settle()

    def merge(self, key: str, sources: Sequence[str], weights: Sequence[float], combination: str,
              density: float | None = None, majority_sign_method: str = "total", seed: int = 0) -> None:
        """peft's `add_weighted_adapter`; DARE's random pruning is seeded, so a recipe always gives
        the same adapter (and the same adapter as a reference model merging alike)."""
        assert self.peft is not None
        with _mutating(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.peft.add_weighted_adapter(list(sources), list(weights), key, combination_type=combination,
                                           density=density, majority_sign_method=majority_sign_method)
            self._settle()

    def _settle(self) -> None:
        """After a change: inference mode for new layers, and the per-row hook on each LoRA layer."""
        self.model.eval()
        for module in self.model.modules():
            if isinstance(module, LoraLayer) and id(module) not in self._hooked:
                module.register_forward_pre_hook(_inject, with_kwargs=True)
                self._hooked.add(id(module))


@contextlib.contextmanager
def _mutating() -> Iterator[None]:
    # Plain tensors (the engine loop runs in inference mode, whose tensors cannot be edited later).
    with torch.inference_mode(False), torch.no_grad():
        yield
