"""`TORCH_DTYPE=auto`: the model's own dtype wherever the device computes it natively, else float32.

- CUDA: the checkpoint's dtype (`config.dtype`, older configs `torch_dtype`), as vLLM and
  transformers read "auto".
- CPU: bfloat16 checkpoints stay bfloat16 only on CPUs with AMX (`amx_bf16`) or AVX512-BF16
  (`avx512_bf16`); without them PyTorch emulates bfloat16 arithmetic, which is slower than float32.
  float16 checkpoints get float32 on every CPU (no native float16 matmul path is used here).
- GGUF files are dequantized, so float32.
The flags come from /proc/cpuinfo (server/model/cpuinfo.py); elsewhere none is known: float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype the model is loaded in and the reason, for the start-up log and `/info`."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def config_dtype(config: object) -> torch.dtype | None:
    """The checkpoint's own dtype as its config records it (None when it records none)."""
    for attr in ("dtype", "torch_dtype"):
        value = getattr(config, attr, None)
        if isinstance(value, torch.dtype):
            return value
        if isinstance(value, str) and value in DTYPES:
            return DTYPES[value]
    return None


def resolve(name: str, cuda: bool, gguf: bool, model_dtype: torch.dtype | None,
            flags: frozenset[str]) -> DtypeChoice:
    """TORCH_DTYPE (`auto` or a dtype name) -> the dtype to load, with the reason."""
    if name in DTYPES:
        return DtypeChoice(DTYPES[name], f"TORCH_DTYPE={name}")
    if gguf:
        return DtypeChoice(torch.float32, "auto: GGUF weights are dequantized to float32")
    own = model_dtype or torch.float32
    own_name = str(own).removeprefix("torch.")
    if cuda:
        return DtypeChoice(own, f"auto: the model's own dtype ({own_name}) on CUDA")
    if own == torch.float32:
        return DtypeChoice(own, "auto: the model's own dtype (float32)")
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if own == torch.bfloat16 and native:
        return DtypeChoice(own, f"auto: the model's own dtype (bfloat16); this CPU computes it natively "
                                f"({', '.join(native)})")
    if own == torch.bfloat16:
        return DtypeChoice(torch.float32, "auto: float32, not the model's bfloat16: this CPU has neither "
                                          "amx_bf16 nor avx512_bf16, so bfloat16 would be emulated")
    return DtypeChoice(torch.float32, f"auto: float32, not the model's {own_name}: no native {own_name} "
                                      "path on CPUs")
