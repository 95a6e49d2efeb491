"""Tensor-parallel plans: per-GPU weights and KV cache, checked against sums from the architecture."""

from __future__ import annotations

import math

import pytest

from server.model.plan import GIB, PlanError, plan
from server.model.quantize import INT8_GROUP
from server.model.tp_plan import plan_tensor_parallel, shard_sizes
from server.plan import main
from server.presets import load_preset

ARCH = load_preset("llama-2-70b-chat").architecture
L, H, VOCAB, INTER = ARCH.num_hidden_layers, ARCH.hidden_size, ARCH.vocab_size, ARCH.intermediate_size
HEAD_DIM, KV = ARCH.head_dim, ARCH.num_key_value_heads


def linears() -> list[tuple[int, int, str]]:
    """One Llama decoder layer's linear layers: (out, in) and how transformers' tp_plan splits them."""
    kv_width = KV * HEAD_DIM
    return [(H, H, "col"), (kv_width, H, "col"), (kv_width, H, "col"), (H, H, "row"),
            (INTER, H, "col"), (INTER, H, "col"), (H, INTER, "row")]


def norm_bytes(dtype_bytes: int) -> int:
    return (2 * L + 1) * H * dtype_bytes  # two RMSNorms a layer and the final one, whole on every GPU


def test_llama_2_70b_float16_on_8x80gib() -> None:
    n = 8
    result = plan_tensor_parallel("llama-2-70b-chat", n, "8x80GiB", dtype="float16")
    # every linear split 8 ways, the embeddings and the LM head over the vocabulary (32000 / 8)
    split = 2 * (L * sum(rows * cols for rows, cols, _ in linears()) + 2 * VOCAB * H) // n
    assert [r.split for r in result.ranks] == [split] * n
    for r in result.ranks:
        assert 0 <= r.whole - norm_bytes(2) < 2**20  # plus the rotary buffers
        assert r.free == 80 * GIB - r.weights - GIB
    assert 16 * GIB < result.ranks[0].weights < 16.1 * GIB  # ~128.5 GiB / 8
    assert result.kv_bytes_per_token_per_gpu == L * 2 * (KV // n) * HEAD_DIM * 2 == 40_960
    assert result.tokens_fit == result.ranks[0].free // 40_960 > 1_600_000
    assert result.working == [1, 2, 4, 8]
    # the whole model once, plus the copies of what every GPU keeps whole
    assert sum(r.weights for r in result.ranks) == result.weight_bytes + (n - 1) * result.ranks[0].whole


def test_llama_2_70b_int8_on_2x80gib() -> None:
    n = 2

    def scales(rows: int, cols: int) -> int:  # a float16 scale and an int8 zero point per 64 weights
        return rows * math.ceil(cols / INT8_GROUP) * 3

    per_layer = sum(rows * cols // n + (scales(rows // n, cols) if how == "col" else scales(rows, cols // n))
                    for rows, cols, how in linears())
    split = L * per_layer + 2 * VOCAB * H * 2 // n  # embeddings and LM head stay float16
    result = plan_tensor_parallel("llama-2-70b-chat", n, "2x80GiB", quantization="int8")
    assert result.quantization == "int8" and result.dtype == "float16"
    assert [r.split for r in result.ranks] == [split, split]
    assert all(0 <= r.whole - norm_bytes(2) < 2**20 for r in result.ranks)
    assert 33.8 * GIB < result.ranks[0].weights < 33.9 * GIB
    assert result.kv_bytes_per_token_per_gpu == L * 2 * (KV // n) * HEAD_DIM * 2 == 163_840
    assert result.tokens_fit == (80 * GIB - result.ranks[0].weights - GIB) // 163_840


@pytest.mark.parametrize(("n", "named"), [
    (3, "num_attention_heads=64, num_key_value_heads=8, intermediate_size=28672"),
    (16, "does not divide num_key_value_heads=8;"),
])
def test_a_size_that_does_not_divide_is_refused_naming_the_sizes(n: int, named: str, capsys) -> None:
    with pytest.raises(PlanError, match=f"over {n} ranks does not divide.*sizes that work: 1, 2, 4, 8"):
        plan_tensor_parallel("llama-2-70b-chat", n)
    argv = ["--preset", "llama-2-70b-chat", "--tensor-parallel", str(n), "--gpus", "80GiB"]
    assert main(argv) == 2
    assert named in capsys.readouterr().err


def test_cli_prints_per_gpu_numbers_and_the_sizes_that_work(capsys) -> None:
    assert main(["--preset", "llama-2-70b-chat", "--tensor-parallel", "8", "--gpus", "8x80GiB",
                 "--show-device-map"]) == 0
    out = capsys.readouterr().out
    assert "tensor parallel over 8 GPUs" in out and "40,960 bytes per token" in out
    assert "sizes that work for llama-2-70b-chat: 1, 2, 4, 8" in out and "TENSOR_PARALLEL=8" in out
    assert "model.layers.*.mlp.down_proj -> rowwise" in out
    assert out.count(" 16.06 GiB ") == 16  # weights and split, on each of the 8 GPUs


def test_too_small_gpus_and_mismatched_counts_are_refused() -> None:
    with pytest.raises(PlanError, match=r"over 2 GPUs needs 64\.\d+ GiB of weights on GPU 0"):
        plan_tensor_parallel("llama-2-70b-chat", 2, "48GiB", dtype="float16")
    with pytest.raises(PlanError, match="--gpus names 2 GPUs"):
        plan_tensor_parallel("llama-2-70b-chat", 4, "2x80GiB")
    with pytest.raises(PlanError, match="'falcon' has no tp_plan"):
        plan_tensor_parallel("falcon-7b", 2)


def test_one_rank_holds_the_whole_model() -> None:
    one = plan_tensor_parallel("smollm2-135m-instruct", 1, "16GiB")
    assert one.ranks[0].weights == one.weight_bytes == plan("smollm2-135m-instruct", "16GiB").weight_bytes


def test_uneven_shards_follow_torch_chunk() -> None:
    assert shard_sizes(32000, 8) == [4000] * 8
    assert shard_sizes(10, 4) == [3, 3, 3, 1]
    assert shard_sizes(2, 4) == [1, 1, 0, 0]
