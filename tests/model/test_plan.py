"""Sharding plans: every preset is planned on meta weights; the numbers are the real models'."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.model.plan import GIB, PlanError, parse_gpus, plan
from server.plan import main
from server.presets import list_presets, load_preset

ALL = list_presets()


@pytest.mark.model  # builds the preset's model on meta weights (seconds each)
@pytest.mark.parametrize("name", ALL)
def test_every_preset_plans_on_its_own_resources(name, capsys):
    preset = load_preset(name)
    assert main(["--preset", name]) == 0
    out = capsys.readouterr().out
    assert f"preset {name}:" in out
    assert "bytes per token" in out and "tokens that fit" in out
    result = plan(preset, f"{preset.resources.gpus}x{preset.resources.gpu_memory}")
    assert len(result.gpus) == preset.resources.gpus
    assert sum(g.layers for g in result.gpus) == preset.architecture.num_hidden_layers
    assert sum(g.weights for g in result.gpus) == result.weight_bytes
    assert all(g.weights + g.reserve <= g.capacity for g in result.gpus)
    assert result.tokens_fit >= min(preset.context_length, 2048)


# Parameter counts published for these models: they check the preset numbers and the config mapping
# (MPT and Falcon use their own config classes) at once.
@pytest.mark.model  # builds the preset's model on meta weights (seconds each)
@pytest.mark.parametrize(
    "name,params,kv",
    [
        ("llama-2-7b-chat", 6_738_415_616, 2 * 32 * 32 * 128 * 2),
        ("llama-2-70b-chat", 68_976_648_192, 2 * 80 * 8 * 128 * 2),
        ("mistral-7b-instruct", 7_248_023_552, 2 * 32 * 8 * 128 * 2),
        ("llama-3.1-8b-instruct", 8_030_261_248, 2 * 32 * 8 * 128 * 2),
        ("falcon-7b", 6_921_720_704, 2 * 32 * 1 * 64 * 2),  # multi-query: one KV head
        ("mpt-7b-instruct", 6_649_286_656, 2 * 32 * 32 * 128 * 2),
        ("phi-3-mini-4k-instruct", 3_821_079_552, 2 * 32 * 32 * 96 * 2),
    ],
)
def test_parameter_counts_and_kv_bytes(name, params, kv):
    result = plan(name, "4x80GiB")
    assert result.parameters == params
    assert result.kv_bytes_per_token == kv
    assert 0 <= result.weight_bytes - params * 2 < 2**20  # plus small buffers (rotary inv_freq)


@pytest.mark.model  # builds the preset's model on meta weights (seconds each)
def test_llama_70b_float16_fails_on_one_80gib_gpu_and_fits_on_two(capsys):
    with pytest.raises(PlanError, match=r"needs 128\.\d+ GiB of weights.*spill"):
        plan("llama-2-70b-chat", "1x80GiB", dtype="float16")
    result = plan("llama-2-70b-chat", "2x80GiB", dtype="float16")
    assert [g.layers for g in result.gpus] == [40, 40]
    assert all(60 * GIB < g.weights < 70 * GIB for g in result.gpus)
    assert set(result.device_map.values()) == {0, 1}


@pytest.mark.model  # builds the preset's model on meta weights (seconds each)
def test_cli_exit_codes_and_messages(capsys: pytest.CaptureFixture[str]):
    args = ["--preset", "llama-2-70b-chat", "--dtype", "float16"]
    # a process of its own: what the shell sees, accelerate's warnings included
    bad = subprocess.run([sys.executable, "-m", "server.plan", *args, "--gpus", "1x80GiB"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "plan failed: llama-2-70b-chat in float16 needs" in bad.stderr
    assert "Use more or larger GPUs" in bad.stderr
    assert "not available" not in bad.stderr  # accelerate's device warnings are silenced
    assert main([*args, "--gpus", "2x80GiB"]) == 0
    out = capsys.readouterr().out
    assert "preset llama-2-70b-chat" in out and "KV cache: 327,680 bytes per token" in out


@pytest.mark.model  # builds the preset's model on meta weights (seconds each)
def test_weights_fit_but_no_room_for_kv_cache_fails():
    # 14.96 GiB of weights + 1 GiB reserve on a 16 GiB card leaves a few hundred tokens.
    with pytest.raises(PlanError, match="tokens of KV cache"):
        plan("llama-3.1-8b-instruct", "1x16GiB")
    assert plan("llama-3.1-8b-instruct", "1x16GiB", min_tokens=1).tokens_fit < 2048


@pytest.mark.model  # builds the preset's model on meta weights (seconds each)
def test_dtype_changes_weights_and_kv():
    fp32 = plan("smollm2-135m-instruct", "1x16GiB", dtype="float32")
    fp16 = plan("smollm2-135m-instruct", "1x16GiB", dtype="float16")
    # parameters scale with the dtype; buffers such as rotary inv_freq stay float32
    assert abs(fp32.weight_bytes - 2 * fp16.weight_bytes) < 1024
    assert fp32.kv_bytes_per_token == 2 * fp16.kv_bytes_per_token


@pytest.mark.model  # builds the preset's model on meta weights (seconds each)
def test_balanced_over_uneven_gpus_respects_each_capacity():
    result = plan("llama-2-13b-chat", "16GiB,24GiB", dtype="float16")
    assert all(g.weights <= g.capacity - g.reserve for g in result.gpus)
    assert all(g.layers > 0 for g in result.gpus)


@pytest.mark.parametrize(
    "spec,expected",
    [("2x24GiB", [24 * GIB] * 2), ("1x80GiB", [80 * GIB]), ("24GiB,48GiB", [24 * GIB, 48 * GIB]),
     ("2X16GiB, 1x8GiB", [16 * GIB, 16 * GIB, 8 * GIB])],
)
def test_parse_gpus(spec, expected):
    assert parse_gpus(spec) == expected


@pytest.mark.parametrize("spec", ["", "0x24GiB", "2xlots", "2x-1GiB"])
def test_parse_gpus_rejects(spec):
    with pytest.raises(PlanError):
        parse_gpus(spec)


@pytest.mark.model  # builds the preset's model on meta weights (seconds each)
def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["--preset", "no-such-model", "--gpus", "1x24GiB"]) == 2
    assert "unknown preset 'no-such-model'" in capsys.readouterr().err


def _cache_bytes(cache) -> int:
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


@pytest.mark.model
@pytest.mark.parametrize(
    "name", ["llama-2-7b-chat", "mistral-7b", "falcon-7b", "mpt-7b-instruct", "phi-3-mini-4k-instruct"]
)
def test_kv_bytes_match_what_transformers_caches(name):
    """Run one real layer of the preset's shape and measure the cache it keeps per token."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from server.model.plan import config_kwargs, kv_bytes_per_token

    preset = load_preset(name)
    arch = preset.architecture.model_copy(update={"num_hidden_layers": 1})
    config = AutoConfig.for_model(arch.model_type, **config_kwargs(arch, preset.context_length))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = model.to_empty(device="cpu").eval()  # values are irrelevant: only cache shapes count
    tokens = 5
    with torch.no_grad():
        out = model(torch.zeros(1, tokens, dtype=torch.long), use_cache=True)
    assert _cache_bytes(out.past_key_values) == tokens * kv_bytes_per_token(arch, "bfloat16", model)


@pytest.mark.model  # builds the preset's model on meta weights (seconds each)
def test_printed_max_memory_gives_the_server_the_same_placement(capsys):
    """The MAX_MEMORY the plan prints, read by the server's config, reproduces the plan's device map."""
    import torch

    from server.config import load_settings
    from server.model.plan import auto_device_map, build_empty_model, parse_size

    assert main(["--preset", "llama-2-13b-chat", "--gpus", "2x24GiB"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    env = dict(item.split("=", 1) for item in line.split(": ", 1)[1].split())
    settings = load_settings(env)
    assert settings.device_map == "auto"
    max_memory = {int(k): parse_size(v) for k, v in settings.max_memory.items()}
    model = build_empty_model(load_preset("llama-2-13b-chat"), "float16")
    placed = auto_device_map(model, max_memory, list(model._no_split_modules), torch.float16)
    assert placed == plan("llama-2-13b-chat", "2x24GiB").device_map


def test_llama_70b_int8_fits_on_one_80gib_gpu(capsys):
    """MosaicML's write-up: Llama2-70B needs "140GB (Float16) or 70GB (Int8) just to store the
    weights". With int8 linear layers (embeddings and LM head stay float16) it fits on one 80 GiB GPU
    with room for KV cache."""
    result = plan("llama-2-70b-chat", "1x80GiB", quantization="int8")
    assert result.quantization == "int8" and result.dtype == "float16"
    # the "70GB (Int8)" claim, plus int8's scales: a float16 scale and an int8 zero point per group
    # of 64 weights (3/64 byte a weight, ~3.2 GB)
    assert 72e9 < result.weight_bytes < 73.5e9
    fp16 = plan("llama-2-70b-chat", "2x80GiB", dtype="float16")
    assert 137e9 < fp16.weight_bytes < 139e9  # and its "140GB (Float16)"
    assert [g.layers for g in result.gpus] == [80]
    assert result.tokens_fit > 35_000  # ~11 GiB left for KV cache at 320 KiB per token
    assert main(["--preset", "llama-2-70b-chat", "--gpus", "1x80GiB", "--quantization", "int8"]) == 0
    out = capsys.readouterr().out
    assert "float16 weights quantized to int8, weights 67.7" in out and "QUANTIZATION=int8" in out


def test_int4_halves_int8_and_too_small_says_by_how_much():
    int8 = plan("llama-3.1-8b-instruct", "1x24GiB", quantization="int8")
    int4 = plan("llama-3.1-8b-instruct", "1x24GiB", quantization="int4")
    fp16 = plan("llama-3.1-8b-instruct", "1x24GiB")
    assert int4.weight_bytes < int8.weight_bytes < fp16.weight_bytes
    # the float16 embeddings and LM head (2 x 128256 x 4096) are not quantized
    unquantized = 2 * 128256 * 4096 * 2
    # int4 halves the linear weights; its scales and shifts (per 128 weights) cost ~6% of that half
    assert 1.8 < (int8.weight_bytes - unquantized) / (int4.weight_bytes - unquantized) < 2
    assert isinstance(int4.weight_bytes, int)
    with pytest.raises(PlanError, match=r"with int8 weights needs 67\.\d+ GiB of weights"):
        plan("llama-2-70b-chat", "1x48GiB", quantization="int8")
