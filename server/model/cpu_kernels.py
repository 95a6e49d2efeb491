"""CPU linear kernels for float32 and bfloat16 `nn.Linear` layers: oneDNN's matmul or PyTorch's
`F.linear`, chosen per call by row count.

oneDNN's matmul ships inside PyTorch (`torch.ops.mkldnn._linear_pointwise`, what `torch.compile`
emits for CPU linears). Which kernel is faster depends on the machine and on the row count, and a
layer timed alone with its weight hot in cache misleads; so the default (`CPU_LINEAR=auto`) times
the running model's own decode steps at start-up (server/model/kernel_choice.py).

Each eligible layer carries a table: for each row bucket (a call's rows rounded up to 1, 2, 4, 8,
... 256) whether to use oneDNN; every call looks its row count up in it (a batch of any size, a
prefill, the exact lane's `generate`). `CPU_LINEAR`:
- `auto` (the default): the kernel the start-up timing chose per bucket (`measure`: the same);
- `onednn`: oneDNN at every row count where this torch build runs it for the model's dtype;
- `torch`: `F.linear` everywhere (layers untouched).
Both kernels use the same weights (no copy; tied weights stay tied) and agree to float rounding.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # rows beyond the last use its choice
MODES = ("auto", "measure", "onednn", "torch")
KERNEL_DTYPES = (torch.float32, torch.bfloat16)


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


def onednn_works(dtype: torch.dtype = torch.float32) -> bool:
    """The op exists in this torch build, runs `dtype` on this CPU and matches `F.linear` on a
    random layer (oneDNN's bfloat16 inner product needs AVX512-BF16 or AMX; elsewhere it refuses)."""
    if not torch.backends.mkldnn.is_available() or dtype not in KERNEL_DTYPES:
        return False
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    try:
        with torch.inference_mode():
            gen = torch.Generator().manual_seed(0)
            w = torch.randn(96, 64, generator=gen).to(dtype)
            b = torch.randn(96, generator=gen).to(dtype)
            x = torch.randn(3, 5, 64, generator=gen).to(dtype)
            got, want = _onednn(x, w, b).float(), F.linear(x, w, b).float()
            return bool(torch.allclose(got, want, rtol=tol, atol=tol * 10))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def eligible(model: nn.Module) -> list[nn.Linear]:
    """Exact `nn.Linear` instances with plain float32 or bfloat16 weights on the CPU, in a dtype
    oneDNN runs here: quantized or adapter layers (module or weight subclasses, such as torchao's
    int8 weights, which report float32) and accelerator weights keep their own kernels."""
    layers = [m for m in model.modules() if type(m) is nn.Linear and type(m.weight) is nn.Parameter
              and m.weight.device.type == "cpu" and m.weight.dtype in KERNEL_DTYPES]
    works = {dtype: onednn_works(dtype) for dtype in {m.weight.dtype for m in layers}}
    return [m for m in layers if works[m.weight.dtype]]


def route(layers: Sequence[nn.Linear], onednn_rows: Sequence[bool]) -> None:
    """Send these layers through the per-row-count choice `onednn_rows` (one flag per ROW_BUCKETS
    entry); calling it again only changes the table."""
    rows = tuple(onednn_rows)
    if len(rows) != len(ROW_BUCKETS):
        raise ValueError(f"one flag per row bucket ({len(ROW_BUCKETS)}); got {len(rows)}")
    for layer in layers:
        layer.onednn_rows = rows
        if "forward" not in layer.__dict__:
            layer.forward = types.MethodType(_by_rows_forward, layer)


def unroute(layers: Sequence[nn.Linear]) -> None:
    """Give these layers back their own forward (`F.linear`)."""
    for layer in layers:
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop("onednn_rows", None)


def use_onednn_linear(model: nn.Module) -> int:
    """oneDNN at every row count (CPU_LINEAR=onednn); returns how many layers it routes."""
    layers = eligible(model)
    if not layers:
        log.info("oneDNN linear kernels unavailable for this model's layers in this torch build/CPU")
    route(layers, (True,) * len(ROW_BUCKETS))
    return len(layers)
