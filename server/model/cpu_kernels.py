"""CPU linear kernels for float32 `nn.Linear` layers: oneDNN's matmul or PyTorch's `F.linear`,
chosen per call by row count.

oneDNN's matmul ships inside PyTorch (`torch.ops.mkldnn._linear_pointwise`, what `torch.compile`
emits for CPU linears) and, inside the running model, is faster at every row count measured on an
idle 2-core machine (`make bench`'s kernel check): one request 4.14 s against 4.54 s with small
layers on `F.linear` at one or two rows and 5.32 s with `F.linear` everywhere; the 49152x576 LM
head alone at one row 4.6 ms against 10.5 ms. A layer timed alone with the same input over and over
(`python -m bench.kernels`) shows `F.linear` ahead on small weights at one or two rows
(576x576: 0.036 ms against 0.056 ms), but that is a hot-cache artefact: in the model every layer's
weight comes from memory, and the earlier threshold built on it (F.linear up to 2 rows) cost 7% at
c=1 and 10% at c=2.

Each eligible layer carries a table: for each row bucket (a call's rows rounded up to 1, 2, 4, 8,
... 256) which kernel to use; every call looks its row count up in it (a batch of any size, a
prefill, the exact lane's `generate`). `CPU_LINEAR`:
- `auto` (the default): oneDNN at every row count where this torch build has it, `F.linear` else;
- `measure`: time both kernels once at start-up on each distinct weight shape and row bucket and
  keep the faster (for other hardware; it times layers alone, so it favours `F.linear` on small
  weights, see above);
- `onednn` (same as `auto` where oneDNN works) or `torch`: one kernel at every row count.
Both kernels use the same weights (no copy; tied weights stay tied) and agree to float rounding.
"""

from __future__ import annotations

import logging
import time
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # rows beyond the last use its choice
MODES = ("auto", "measure", "onednn", "torch")


def bucket(rows: int) -> int:
    """Index in ROW_BUCKETS of the smallest bucket holding `rows`."""
    return min(len(ROW_BUCKETS) - 1, max(0, rows - 1).bit_length())


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _by_rows_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != self.weight.dtype or torch.is_grad_enabled():  # inference only; else the default
        return F.linear(x, self.weight, self.bias)
    if self.onednn_rows[bucket(x.numel() // x.shape[-1])]:
        return _onednn(x, self.weight, self.bias)
    return F.linear(x, self.weight, self.bias)


def onednn_works() -> bool:
    """The op exists in this torch build and matches `F.linear` on a random float32 layer."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.inference_mode():
            gen = torch.Generator().manual_seed(0)
            w = torch.randn(96, 64, generator=gen)
            b = torch.randn(96, generator=gen)
            x = torch.randn(3, 5, 64, generator=gen)
            return bool(torch.allclose(_onednn(x, w, b), F.linear(x, w, b), rtol=1e-4, atol=1e-4))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


@dataclass(frozen=True)
class Timing:
    """Best-of-`reps` milliseconds of one call of each kernel on a layer shape at a row count."""

    out_features: int
    in_features: int
    rows: int
    torch_ms: float
    onednn_ms: float

    @property
    def onednn_wins(self) -> bool:
        return self.onednn_ms < self.torch_ms


def _best_ms(fn, reps: int) -> float:
    fn()  # warm-up (oneDNN primitive creation, caches)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


@torch.inference_mode()
def measure(layer: nn.Linear, rows: int, reps: int = 3) -> Timing:
    x = torch.randn(rows, layer.in_features, dtype=layer.weight.dtype)
    w, b = layer.weight, layer.bias
    return Timing(layer.out_features, layer.in_features, rows,
                  _best_ms(lambda: F.linear(x, w, b), reps), _best_ms(lambda: _onednn(x, w, b), reps))


def _eligible(model: nn.Module) -> list[nn.Linear]:
    """Exact `nn.Linear` instances with plain float32 weights on the CPU: quantized or adapter
    layers (module or weight subclasses, such as torchao's int8 weights, which report float32) and
    accelerator weights keep their own kernels."""
    return [m for m in model.modules() if type(m) is nn.Linear and type(m.weight) is nn.Parameter
            and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]


def kernel_table(model: nn.Module, reps: int = 3) -> dict[tuple[int, int], list[Timing]]:
    """Both kernels timed on each distinct weight shape of the model, at every row bucket."""
    table: dict[tuple[int, int], list[Timing]] = {}
    for layer in _eligible(model):
        shape = (layer.out_features, layer.in_features)
        if shape not in table:
            table[shape] = [measure(layer, rows, reps) for rows in ROW_BUCKETS]
    return table


def use_kernels_by_rows(model: nn.Module, mode: str = "auto") -> int:
    """Route the model's eligible linear layers through the per-row-count choice; returns how many."""
    if mode == "torch":
        return 0
    if not onednn_works():
        log.info("oneDNN linear kernels unavailable in this torch build; using torch's default")
        return 0
    layers = _eligible(model)
    fixed = (True,) * len(ROW_BUCKETS)  # auto and onednn
    measured: dict[tuple[int, int], tuple[bool, ...]] = {}
    if mode == "measure":
        for shape, timings in kernel_table(model).items():
            measured[shape] = tuple(t.onednn_wins for t in timings)
            log.info("linear %dx%d: oneDNN at rows %s, F.linear at the others", *shape,
                     [t.rows for t in timings if t.onednn_wins])
    for layer in layers:
        layer.onednn_rows = measured.get((layer.out_features, layer.in_features), fixed)
        layer.forward = types.MethodType(_by_rows_forward, layer)
    return len(layers)


def use_onednn_linear(model: nn.Module) -> int:
    """oneDNN at every row count (CPU_LINEAR=onednn)."""
    return use_kernels_by_rows(model, "onednn")
