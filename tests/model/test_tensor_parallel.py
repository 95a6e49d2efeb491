"""Tensor-parallel sizes: which N split a model, checked on transformers' own (tiny) config classes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import FalconConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config
from transformers.distributed.tensor_parallel import get_kv_heads_per_rank

from server.model.tensor_parallel import (
    check_tensor_parallel,
    kv_heads_per_rank,
    refusal,
    tp_plan_of,
    working_sizes,
)


def tiny_llama(**kw: int) -> LlamaConfig:
    sizes = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, intermediate_size=128,
                 num_hidden_layers=2, vocab_size=1001)  # a vocabulary no N > 1 divides: allowed
    return LlamaConfig(**{**sizes, **kw})


def test_divisible_llama_splits_over_its_kv_head_divisors() -> None:
    config = tiny_llama()
    assert check_tensor_parallel(config, 1) == []
    assert check_tensor_parallel(config, 2) == [] and check_tensor_parallel(config, 4) == []
    assert working_sizes(config) == [1, 2, 4]


def test_every_size_n_does_not_divide_is_named() -> None:
    config = tiny_llama(hidden_size=96, num_attention_heads=12, num_key_value_heads=6, intermediate_size=96)
    assert check_tensor_parallel(config, 4) == ["num_key_value_heads=6"]
    assert check_tensor_parallel(config, 8) == ["num_attention_heads=12", "num_key_value_heads=6"]
    assert check_tensor_parallel(config, 5) == [
        "num_attention_heads=12", "num_key_value_heads=6", "intermediate_size=96"]
    assert working_sizes(config) == [1, 2, 3, 6]  # any divisor, not only powers of two
    message = refusal(config, 8)
    assert message is not None
    assert "over 8 ranks does not divide num_attention_heads=12, num_key_value_heads=6;" in message
    assert "sizes that work: 1, 2, 3, 6" in message
    assert refusal(config, 3) is None


def test_intermediate_size_alone_can_refuse() -> None:
    assert check_tensor_parallel(tiny_llama(intermediate_size=100), 8) == [
        "num_key_value_heads=4", "intermediate_size=100"]
    assert check_tensor_parallel(tiny_llama(intermediate_size=132), 4) == []
    assert check_tensor_parallel(tiny_llama(intermediate_size=130), 4) == ["intermediate_size=130"]


def test_hidden_and_vocab_sizes_need_not_divide() -> None:
    """transformers shards embeddings and the LM head over the vocabulary and lets the last rank hold
    less; hidden_size is only split as whole heads. The plan says so: no other size is sharded."""
    config = tiny_llama(vocab_size=32001)
    assert check_tensor_parallel(config, 2) == []
    styles = set(tp_plan_of(config).values())
    assert styles == {"colwise", "rowwise"}
    assert not any("norm" in key or "embed" in key for key in tp_plan_of(config))


@pytest.mark.parametrize("config_class", [LlamaConfig, MistralConfig, Qwen2Config])
def test_grouped_query_models_split_their_kv_cache(config_class: type) -> None:
    config = config_class(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, intermediate_size=128)
    assert working_sizes(config) == [1, 2]
    assert "num_key_value_heads=2" in check_tensor_parallel(config, 4)
    for n in (1, 2):  # the same answer as transformers' own rule
        assert kv_heads_per_rank(config, n) == get_kv_heads_per_rank(tp_plan_of(config), 2, n)
    assert get_kv_heads_per_rank(tp_plan_of(config), 2, 4) is None


def test_phi3_gathers_its_fused_qkv_so_every_rank_keeps_every_kv_head() -> None:
    config = Phi3Config(hidden_size=64, num_attention_heads=8, num_key_value_heads=8, intermediate_size=128)
    assert working_sizes(config) == [1, 2, 4, 8]
    assert kv_heads_per_rank(config, 4) == 8 == get_kv_heads_per_rank(tp_plan_of(config), 8, 4)


def test_a_model_without_a_tp_plan_is_refused_for_any_n_above_one() -> None:
    config = FalconConfig(hidden_size=64, num_attention_heads=8)
    assert tp_plan_of(config) == {}
    assert check_tensor_parallel(config, 1) == []
    assert check_tensor_parallel(config, 2) == ["model_type 'falcon' has no tp_plan in transformers"]
    assert working_sizes(config) == [1]
    assert "only 1 works" in (refusal(config, 2) or "")


def test_bad_sizes_are_errors() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        check_tensor_parallel(tiny_llama(), 0)
    with pytest.raises(ValueError, match="num_key_value_heads=4 does not divide by 8"):
        kv_heads_per_rank(tiny_llama(), 8)


def test_the_check_needs_no_torch() -> None:
    """The server's settings check and the planner's listing can call it before torch is imported."""
    code = "import sys, server.model.tensor_parallel; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
