"""LoRA layers compose with the CPU kernels (server/model/cpu_kernels.py) and with quantized
base layers (int8: torchao, int4: optimum-quanto): peft wraps the layer the loader prepared, which
keeps its own kernel; the adapter's small matrices run in float."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from server.adapters import AdapterRef
from server.adapters.runtime import use_adapters
from server.engine.request import collect
from tests.support.adapters import make_request

pytestmark = pytest.mark.model


def _alone(engine, key: str | None, ids: list[int], n: int) -> list[int]:
    """`generate` on the engine's own model, this request alone, under the same adapter."""
    x = torch.tensor([ids])
    with torch.inference_mode(), use_adapters(key):
        out = engine.loaded.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                           do_sample=False, top_k=None, top_p=None, temperature=None,
                                           eos_token_id=list(engine.limits.eos_token_ids),
                                           pad_token_id=engine.limits.pad_token_id)
    return out[0, x.shape[1]:].tolist()


def test_lora_wraps_the_kernel_layers(adapters_dir: Path, start_engine) -> None:
    from peft.tuners.lora import Linear as LoraLinear

    engine = start_engine(adapters_dir=str(adapters_dir), default_adapter="base", cpu_linear="onednn")
    q = engine.loaded.model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(q, LoraLinear) and type(q.base_layer) is nn.Linear
    assert "forward" in vars(q.base_layer) and hasattr(q.base_layer, "onednn_rows")  # its kernel stayed
    assert not hasattr(q.lora_A["adapter1_1"], "onednn_rows")  # the adapter's own layers: plain


@pytest.mark.parametrize("quantization", ["int8", "int4"])  # torchao's int8, quanto's int4
def test_quantized_base_layers_serve_adapters(adapters_dir: Path, start_engine, quantization: str) -> None:
    from server.model.quantize import quantized_modules

    engine = start_engine(adapters_dir=str(adapters_dir), default_adapter="base", quantization=quantization)
    q = engine.loaded.model.get_submodule("model.layers.0.self_attn.q_proj")
    assert any(m is q.base_layer for _, m in quantized_modules(engine.loaded.model))
    reqs = [make_request(engine, "Write a haiku about autumn.", AdapterRef(name), max_new_tokens=10)
            for name in ("base", "adapter1", "adapter3")]
    for r in reqs:
        engine.submit(r)
    got = [collect(r, timeout=300)[0].token_ids for r in reqs]
    assert got == [_alone(engine, r.adapter_key, r.input_ids, 10) for r in reqs]  # mixed batch == alone
    assert len({tuple(g) for g in got}) == 3  # each adapter changes the quantized model's answer
