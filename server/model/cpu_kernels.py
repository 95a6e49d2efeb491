"""oneDNN matmuls for a model's linear layers on the CPU.

Why: at decode batch sizes (one to a few dozen rows), PyTorch's default CPU path for `F.linear`
streams the weights at a fraction of the memory bandwidth. oneDNN's matmul, which ships inside
PyTorch (`torch.ops.mkldnn._linear_pointwise`, what `torch.compile` emits for CPU linears), runs
the same layers up to twice as fast here (the embedded model's LM head at 8 rows: 17 ms -> 9 ms),
with no compile step and the same weights (no copy, tied weights stay tied). Results agree with
`F.linear` to float rounding; the batched engine and exact `generate` share the patched model.
"""

from __future__ import annotations

import logging
import types

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

def _onednn_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != self.weight.dtype or torch.is_grad_enabled():  # inference only; else the default
        return F.linear(x, self.weight, self.bias)
    return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


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
            got = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            return bool(torch.allclose(got, F.linear(x, w, b), rtol=1e-4, atol=1e-4))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def use_onednn_linear(model: nn.Module) -> int:
    """Route the model's plain `nn.Linear` layers on the CPU through oneDNN; returns how many.

    Only exact `nn.Linear` instances whose weights are float32 on the CPU: quantized or adapter
    layers (subclasses, other dtypes) and accelerator weights keep their own kernels."""
    if not onednn_works():
        log.info("oneDNN linear kernels unavailable in this torch build; using torch's default")
        return 0
    count = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        w = module.weight
        if w.device.type == "cpu" and w.dtype == torch.float32:
            module.forward = types.MethodType(_onednn_forward, module)
            count += 1
    return count
