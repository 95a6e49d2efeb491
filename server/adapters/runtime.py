"""The model side of adapters: peft's LoRA layers inside the served model, and which adapter each
row of a forward pass uses.

The first adapter wraps the loaded model with peft (`PeftModel.from_pretrained`); its LoRA layers
live inside the model's own modules, so the engine keeps calling the model as before. Which rows
use which adapter is set per thread with `use_adapters` and read by every LoRA layer's forward:
a forward on a thread that set nothing (prompt scoring, a base-model prefix) runs the base model.

A batch whose rows all use one adapter (or a `generate` call) runs peft's own LoRA forward,
`result + lora_B(lora_A(x)) * scaling`. A mixed batch runs every adapter of a layer at once: the
layer's lora_A weights stacked [R, in] and lora_B [out, R] (rebuilt after each change), a 0/1 mask
keeping each row's own adapter columns, and each row's scaling: two matmuls and two products per
layer whatever the number of adapters, instead of peft's mixed-batch forward (`adapter_names`),
which gathers, multiplies and scatters once per adapter in every layer and builds Python index
lists at every call (what it gains: docs/architecture/decisions.md; `make bench --adapters`
measures it through the server). The mask multiplies other adapters' columns by
exactly 0, and the tests hold greedy outputs token-identical to peft's PeftModel running each
adapter alone.
The CPU kernels of server/model/cpu_kernels.py stay on the base layers that peft wraps.

Every method that changes the model (`load`, `delete`, `merge`) must run while no forward pass
does: the manager calls them through the engine loop (`EngineLoop.call`), between steps.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

_local = threading.local()


class RowAdapters:
    """Which rows use which adapter, set once per forward by `use_adapters`. `single`: one adapter
    for every row of the batch, whatever its expanded size (a `generate` call); otherwise `keys`,
    one per row (None: the base model), and each layer layout's row mask, built once per forward."""

    def __init__(self, single: str | None, keys: tuple[str | None, ...] = ()) -> None:
        self.single = single
        self.keys = keys
        self._masks: dict[tuple, tuple[torch.Tensor, torch.Tensor] | None] = {}

    @classmethod
    def of(cls, keys: Sequence[str | None] | str | None) -> RowAdapters | None:
        if keys is None or isinstance(keys, str):
            return None if keys is None else cls(keys)
        distinct = set(keys)
        if distinct == {None}:
            return None
        if len(distinct) == 1:
            return cls(keys[0])
        return cls(None, tuple(keys))

    def mask(self, layout: tuple[tuple[str, int, int, float], ...], device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For a layer whose stacked adapters are `layout` ((key, start, end, scaling), ...): which
        stacked columns each row keeps (0/1, [rows, R]) and each row's scaling ([rows, 1, 1]);
        None when no row uses an adapter of this layer."""
        if layout not in self._masks:
            spans = {k: (a, b, sc) for k, a, b, sc in layout}
            width = layout[-1][2] if layout else 0
            mask = torch.zeros((len(self.keys), width))
            scale = torch.zeros((len(self.keys), 1, 1))
            used = False
            for i, key in enumerate(self.keys):
                if key in spans:
                    a, b, sc = spans[key]
                    mask[i, a:b] = 1.0
                    scale[i] = sc
                    used = True
            self._masks[layout] = (mask.to(device), scale.to(device)) if used else None
        return self._masks[layout]


@contextlib.contextmanager
def use_adapters(keys: Sequence[str | None] | str | None) -> Iterator[None]:
    """Forward passes on this thread use these adapters: one key per row (None: the base model),
    one key for every row (a `generate` call), or None for the base model."""
    previous = getattr(_local, "rows", None)
    _local.rows = RowAdapters.of(keys)
    try:
        yield
    finally:
        _local.rows = previous


@dataclass
class _Stacked:
    """One LoRA layer's adapters side by side: lora_A weights stacked [R, in], lora_B [out, R]."""

    layout: tuple[tuple[str, int, int, float], ...]
    a: torch.Tensor
    b: torch.Tensor


def _stack(layer: LoraLinear) -> _Stacked | None:
    keys = sorted(layer.lora_A.keys())
    if not keys:
        return None
    layout, start = [], 0
    for k in keys:
        r = layer.lora_A[k].weight.shape[0]
        layout.append((k, start, start + r, float(layer.scaling[k])))
        start += r
    a = torch.cat([layer.lora_A[k].weight for k in keys])
    b = torch.cat([layer.lora_B[k].weight for k in keys], dim=1)
    return _Stacked(tuple(layout), a, b)


def _lora_forward(self: LoraLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A LoRA layer's forward for the rows `use_adapters` set (see the module docstring)."""
    if "adapter_names" in kwargs:  # peft's own mixed-batch API, called directly
        return LoraLinear.forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    rows_of: RowAdapters | None = getattr(_local, "rows", None)
    if rows_of is None:
        return result
    if rows_of.single is not None:  # every row one adapter: exactly peft's forward
        key = rows_of.single
        if key not in self.lora_A:
            return result
        lora_a = self.lora_A[key]
        return result + self.lora_B[key](lora_a(self.lora_dropout[key](x.to(lora_a.weight.dtype)))) \
            * self.scaling[key]
    stacked: _Stacked | None = self._inferbox_stacked
    rows = rows_of.mask(stacked.layout, x.device) if stacked is not None else None
    if rows is None:
        return result
    mask, scale = rows
    xa = F.linear(x.to(stacked.a.dtype), stacked.a)  # every adapter of this layer at once
    xa = xa * mask.view(mask.shape[0], *([1] * (xa.dim() - 2)), mask.shape[1])  # keep each row's own
    delta = F.linear(xa, stacked.b) * scale.view(-1, *([1] * (xa.dim() - 1)))
    return result + delta.to(result.dtype)


class LoraRuntime:
    """peft's LoRA layers in one loaded model. Not thread-safe: see the module docstring."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model  # the served model; peft edits its modules in place
        self.peft: PeftModel | None = None
        self._patched: set[int] = set()

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
        """After a change: inference mode for new layers, each LoRA layer's adapters stacked again,
        and the per-row forward on each LoRA layer."""
        self.model.eval()
        for module in self.model.modules():
            if isinstance(module, LoraLinear):
                module._inferbox_stacked = _stack(module)
                if id(module) not in self._patched:
                    module.forward = types.MethodType(_lora_forward, module)
                    self._patched.add(id(module))


def stacked_adapters(layer: torch.nn.Module) -> tuple[list[str], int]:
    """The adapter keys a LoRA layer runs at once in a mixed batch, and their stacked rank (what
    `/v1/models` cannot show and the tests check after loads and deletes)."""
    stacked: _Stacked | None = getattr(layer, "_inferbox_stacked", None)
    if stacked is None:
        return [], 0
    return [key for key, *_ in stacked.layout], int(stacked.a.shape[0])


@contextlib.contextmanager
def _mutating() -> Iterator[None]:
    # Plain tensors (the engine loop runs in inference mode, whose tensors cannot be edited later).
    with torch.inference_mode(False), torch.no_grad():
        yield
