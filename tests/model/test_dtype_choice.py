"""TORCH_DTYPE=auto: the model's own dtype where the device computes it natively, float32 on other
CPUs (CPU flags injected, so the tests hold on any machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from server.config import Settings
from server.model import loader
from server.model.cpuinfo import cpu_flags, cpu_model_name
from server.model.dtype_choice import config_dtype, resolve
from tests.support.models import tiny_model_dir

BF16, FP32, FP16 = torch.bfloat16, torch.float32, torch.float16
EPYC_AVX2 = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})  # no native bfloat16
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
AVX512_ONLY = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl"})  # bfloat16 only emulated


@pytest.mark.parametrize(("name", "cuda", "gguf", "own", "flags", "want"), [
    ("auto", False, False, BF16, EPYC_AVX2, FP32),
    ("auto", False, False, BF16, AVX512_ONLY, FP32),
    ("auto", False, False, BF16, SAPPHIRE_RAPIDS, BF16),
    ("auto", False, False, BF16, frozenset({"avx512_bf16"}), BF16),
    ("auto", False, False, BF16, frozenset(), FP32),  # flags unknown (not Linux)
    ("auto", False, False, FP32, SAPPHIRE_RAPIDS, FP32),
    ("auto", False, False, FP16, SAPPHIRE_RAPIDS, FP32),
    ("auto", False, False, None, SAPPHIRE_RAPIDS, FP32),  # config without a dtype
    ("auto", True, False, BF16, frozenset(), BF16),
    ("auto", True, False, FP16, frozenset(), FP16),
    ("auto", True, True, BF16, frozenset(), FP32),  # GGUF: dequantized
    ("bfloat16", False, False, FP32, EPYC_AVX2, BF16),  # an explicit dtype always wins
    ("float32", True, False, BF16, frozenset(), FP32),
])
def test_resolve(name: str, cuda: bool, gguf: bool, own: torch.dtype | None, flags: frozenset[str],
                 want: torch.dtype) -> None:
    choice = resolve(name, cuda, gguf, own, flags)
    assert choice.dtype == want and choice.reason
    assert choice.name == str(want).removeprefix("torch.")


def test_reasons_say_why() -> None:
    assert "amx_bf16" in resolve("auto", False, False, BF16, SAPPHIRE_RAPIDS).reason
    emulated = resolve("auto", False, False, BF16, EPYC_AVX2).reason
    assert "neither amx_bf16 nor avx512_bf16" in emulated and "float32" in emulated
    assert resolve("bfloat16", False, False, None, frozenset()).reason == "TORCH_DTYPE=bfloat16"


def test_config_dtype_reads_both_spellings() -> None:
    assert config_dtype(LlamaConfig(dtype="bfloat16")) == BF16
    assert config_dtype(type("Old", (), {"torch_dtype": "float16"})()) == FP16
    assert config_dtype(object()) is None


def test_cpuinfo_flags_and_model(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                    "flags\t\t: fpu avx2 avx512f amx_bf16 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f", "amx_bf16", "avx512_bf16"}
    assert cpu_model_name(info) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_flags(tmp_path / "absent") == frozenset()
    assert cpu_model_name(tmp_path / "absent")  # the platform's string instead


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint that ships in bfloat16, as SmolLM2 on the hub does."""
    path = tiny_model_dir(tmp_path_factory.mktemp("bf16"))
    loaded = loader.load(Settings(model_path=str(path), torch_dtype="bfloat16", cpu_linear="torch"))
    loaded.model.save_pretrained(path)
    return path


@pytest.mark.model
def test_without_native_bfloat16_the_default_stays_float32(bf16_model: Path, monkeypatch) -> None:
    assert config_dtype(loader.AutoConfig.from_pretrained(bf16_model)) == BF16
    monkeypatch.setattr(loader, "cpu_flags", lambda: EPYC_AVX2)
    loaded = loader.load(Settings(model_path=str(bf16_model), cpu_linear="torch"))
    assert loaded.dtype == FP32 and "bfloat16 would be emulated" in loaded.dtype_reason


@pytest.mark.model
def test_with_native_bfloat16_the_default_is_the_models_own(bf16_model: Path, monkeypatch) -> None:
    monkeypatch.setattr(loader, "cpu_flags", lambda: SAPPHIRE_RAPIDS)
    loaded = loader.load(Settings(model_path=str(bf16_model), cpu_linear="torch"))
    assert loaded.dtype == BF16 and "amx_bf16" in loaded.dtype_reason
    pinned = loader.load(Settings(model_path=str(bf16_model), torch_dtype="float32", cpu_linear="torch"))
    assert pinned.dtype == FP32 and pinned.dtype_reason == "TORCH_DTYPE=float32"
