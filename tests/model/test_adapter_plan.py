"""`server.plan --adapters N --adapter-rank r`: the bytes of N LoRA adapters, checked against peft."""

from __future__ import annotations

import pytest

from server.model.adapter_plan import adapter_plan
from server.model.plan import PlanError, plan
from server.plan import main

pytestmark = pytest.mark.model  # builds models (meta weights, or a tiny random one)


def test_bytes_equal_the_parameters_peft_adds():
    """A real peft LoRA on a tiny Llama: its trainable parameters x 4 bytes (float32) per adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    for rank, targets in ((4, None), (8, ["q_proj", "k_proj", "down_proj"]), (2, ["all-linear"])):
        base = LlamaForCausalLM(config)
        lora = adapter_plan(base, 3, rank, targets)
        peft_targets = "all-linear" if targets == ["all-linear"] else targets  # None: peft's default
        peft_model = get_peft_model(base, LoraConfig(r=rank, target_modules=peft_targets))
        added = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        assert lora.bytes_each == added * 4, (rank, targets)
        assert lora.total_bytes == 2 * 3 * added * 4  # peft's matrices and the engine's stacked copy
        assert sorted(lora.bytes_per_layer) == [0, 1, 2]


def test_llama_7b_rank_16_on_q_and_v_is_32_mib_each(capsys):
    base = plan("llama-2-7b-chat", "1x24GiB")
    with_adapters = plan("llama-2-7b-chat", "1x24GiB", adapters=4, adapter_rank=16)
    each = 16 * (4096 + 4096) * 2 * 32 * 4  # rank x (in + out) x {q, v} x 32 layers x float32
    assert with_adapters.adapters.bytes_each == each == 32 * 2**20
    assert with_adapters.gpus[0].weights - base.gpus[0].weights == 2 * 4 * each
    assert with_adapters.tokens_fit < base.tokens_fit
    assert main(["--preset", "llama-2-7b-chat", "--gpus", "1x24GiB", "--adapters", "4",
                 "--adapter-rank", "16"]) == 0
    assert "adapters: 4 x LoRA rank 16 on q_proj,v_proj (64 modules): 32.00 MiB each, held twice " \
        "(peft's and the stacked copy): 256.00 MiB in all" in capsys.readouterr().out


def test_adapters_follow_their_layers_across_gpus():
    result = plan("llama-2-13b-chat", "2x24GiB", adapters=2, adapter_rank=8)
    base = plan("llama-2-13b-chat", "2x24GiB")
    per_layer = result.adapters.bytes_per_layer[0]
    for g, b in zip(result.gpus, base.gpus, strict=True):
        assert g.weights - b.weights == 2 * 2 * per_layer * g.layers  # 2 adapters, each held twice


def test_too_many_adapters_and_bad_targets_fail_with_the_reason():
    with pytest.raises(PlanError, match="adapters of rank 256 .* do not fit"):
        plan("llama-2-7b-chat", "1x16GiB", adapters=200, adapter_rank=256, min_tokens=0)
    with pytest.raises(PlanError, match="no linear layer .* named nope"):
        plan("llama-2-7b-chat", "1x24GiB", adapters=1, adapter_targets=["nope"])
    assert main(["--preset", "llama-2-7b-chat", "--gpus", "1x24GiB", "--adapters", "1",
                 "--adapter-rank", "0"]) == 2
