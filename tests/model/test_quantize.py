"""QUANTIZATION: what can be served is quantized at load (int8 by torchao, int4 by optimum-quanto);
the rest is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from server.config import ConfigError, Settings
from server.model import loader, quantize
from server.model.cpu_kernels import onednn_works
from tests.support.models import tiny_model_dir


@pytest.mark.parametrize(("q", "kw", "ok", "needle"), [
    ("none", {"cuda": False}, True, ""),
    ("int8", {"cuda": False}, True, ""),
    ("int4", {"cuda": False}, True, ""),
    ("fp8", {"cuda": False}, False, "no CPU kernel"),
    ("fp8", {"cuda": True, "capability": (7, 5)}, False, "compute capability 8.0"),
    ("fp8", {"cuda": True, "capability": (9, 0)}, True, ""),
    ("int8", {"cuda": False, "gguf": True}, False, "GGUF"),
    ("int3", {"cuda": False}, False, "must be one of"),
])
def test_support(q: str, kw: dict, ok: bool, needle: str) -> None:
    result = quantize.support(q, **kw)
    assert result.ok is ok
    assert needle in result.reason


def test_refused_before_loading_with_the_reason() -> None:
    assert issubclass(quantize.QuantizationError, ConfigError)  # `python -m server` reports it
    with pytest.raises(quantize.QuantizationError, match="GGUF"):
        loader.load(Settings(model_path="/nonexistent/model.gguf", quantization="int8"))
    if not torch.cuda.is_available():
        with pytest.raises(quantize.QuantizationError, match="fp8 weights have no CPU kernel"):
            loader.check_quantization(Settings(quantization="fp8"))


def test_weight_bytes_counts_quantized_storage() -> None:
    from optimum.quanto import freeze, qint4, qint8
    from optimum.quanto import quantize as quanto_quantize

    def layer() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(256, 512, bias=False))

    fp32 = quantize.weight_bytes(layer())
    assert fp32 == 256 * 512 * 4
    for qtype, ratio in ((qint8, 4), (qint4, 8)):
        m = layer()
        quanto_quantize(m, weights=qtype)
        freeze(m)
        assert [n for n, _ in quantize.quantized_modules(m)] == ["0"]
        got = quantize.weight_bytes(m)
        # the data plus scales: int8 one per row; int4 a float32 scale and shift per 128 weights
        assert fp32 / ratio <= got < fp32 / ratio * 1.15


def _cpu_kernel(module: nn.Module) -> bool:
    """Whether server/model/cpu_kernels.py replaced this module's forward."""
    func = getattr(module.forward, "__func__", module.forward)
    return getattr(func, "__module__", "") == "server.model.cpu_kernels"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Input sizes 64 and 128: every linear layer divides into int8's groups of 64."""
    return tiny_model_dir(tmp_path_factory.mktemp("model"), hidden=64, intermediate=128)


def _is_quantized(q: str, module: nn.Module) -> bool:
    from optimum.quanto import QLinear
    from torchao.quantization import Int8Tensor

    if q == "int8":  # torchao keeps the module and swaps its weight for a grouped int8 tensor
        return type(module) is nn.Linear and isinstance(module.weight, Int8Tensor)
    return isinstance(module, QLinear) and module.frozen


@pytest.mark.model
@pytest.mark.parametrize("q", ["int8", "int4"])
def test_load_quantized_tiny_model(tiny: Path, q: str) -> None:
    full = loader.load(Settings(model_path=str(tiny)))
    loaded = loader.load(Settings(model_path=str(tiny), quantization=q, cpu_linear="onednn"))
    assert loaded.quantization == q
    layers = dict(quantize.quantized_modules(loaded.model))
    assert len(layers) == 2 * 7  # q/k/v/o + gate/up/down in each of the 2 decoder layers
    assert all(_is_quantized(q, m) for m in layers.values())
    assert type(loaded.model.lm_head) is nn.Linear  # the LM head stays in float (quality)
    assert loaded.weight_bytes < full.weight_bytes
    # the CPU kernels route only plain float weights: quantized layers keep their library's kernels
    assert not any(_cpu_kernel(m) for m in layers.values())
    if onednn_works():
        assert _cpu_kernel(loaded.model.lm_head)
    ids = torch.tensor([[65, 3, 4, 5]])
    with torch.inference_mode():  # the engine's mode (quanto's int4 alone fails in it)
        out = loaded.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=66)
        logits_q, logits = loaded.model(ids).logits, full.model(ids).logits
    assert out.shape == (1, 8)
    assert torch.isfinite(logits_q).all()
    assert (logits_q - logits).abs().max() < 0.5 * logits.abs().max()  # close, not equal


def test_int4_unpacks_in_pytorch_without_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """quanto's C++ extension is never compiled: on the CPU its `unpack` op is `unpack_bits`, which
    reads quanto's own packing back exactly (2 and 4 bits; row counts that do and do not fill a
    byte)."""
    from optimum.quanto.library.extensions import extension
    from optimum.quanto.tensor.packed import PackedTensor

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("quanto compiled its C++ extension")

    monkeypatch.setattr(extension, "load", no_compiler)
    quantize.use_pytorch_unpack()
    generator = torch.Generator().manual_seed(0)
    for bits in (2, 4):
        for rows in (7, 8):
            t = torch.randint(0, 2**bits, (rows, 5), dtype=torch.uint8, generator=generator)
            assert torch.equal(PackedTensor.pack(t, bits).unpack(), t)


@pytest.mark.model
def test_model_without_linear_layers_is_refused(tmp_path: Path) -> None:
    """GPT-2 keeps its projections in Conv1D, which torchao does not quantize: refused, not ignored."""
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=67, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tiny_model_dir(tmp_path)  # borrow its tokenizer files
    for f in (tmp_path / "tiny").glob("tokenizer*"):
        (tmp_path / "gpt2" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(loader.ModelLoadError, match="no linear layers torchao can quantize"):
        loader.load(Settings(model_path=str(tmp_path / "gpt2"), quantization="int8"))


@pytest.mark.model
def test_quantization_skip_keeps_named_modules_in_float(tiny: Path) -> None:
    settings = Settings(model_path=str(tiny), quantization="int8", quantization_skip=("down_proj",))
    loaded = loader.load(settings)
    names = [n for n, _ in quantize.quantized_modules(loaded.model)]
    assert len(names) == 2 * 6 and not any("down_proj" in n for n in names)
    assert type(loaded.model.model.layers[0].mlp.down_proj) is nn.Linear


@pytest.mark.model
def test_int8_keeps_layers_it_cannot_group_in_float(tmp_path: Path) -> None:
    """Input size 32 (q/k/v/o, gate/up) does not divide into groups of 64: those stay float and
    are said in the log; down_proj (input 64) is quantized."""
    path = tiny_model_dir(tmp_path)
    assert set(quantize.ungroupable_linears(quantize.empty_model(str(path)))) == {
        f"model.layers.{i}.{m}" for i in range(2) for m in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj")} | {"lm_head"}
    loaded = loader.load(Settings(model_path=str(path), quantization="int8"))
    names = [n for n, _ in quantize.quantized_modules(loaded.model)]
    assert names == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
