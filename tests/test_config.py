from __future__ import annotations

from pathlib import Path

import pytest

from server.config import DEFAULT_MODEL_PATH, ConfigError, load_settings
from server.kaito_flags import flags_to_env


def test_defaults_serve_the_embedded_model() -> None:
    s = load_settings({})
    assert s.model_path == DEFAULT_MODEL_PATH
    assert s.model_path.endswith("models/smollm2-135m-instruct")
    assert s.port == 5000 and s.torch_dtype == "auto" and s.device_map == "auto"
    assert not s.allow_remote_files and not s.trust_remote_code


def test_environment_overrides() -> None:
    s = load_settings({"PORT": "8080", "TORCH_DTYPE": "bfloat16", "DEVICE_MAP": "balanced",
                       "MAX_MEMORY": "0=20GiB, 1=20GiB,cpu=64GiB", "ALLOW_REMOTE_FILES": "true",
                       "MAX_BATCH_SIZE": "4"})
    assert s.port == 8080 and s.torch_dtype == "bfloat16" and s.device_map == "balanced"
    assert s.max_memory == {"0": "20GiB", "1": "20GiB", "cpu": "64GiB"}
    assert s.allow_remote_files is True and s.max_batch_size == 4


def test_preset_then_environment() -> None:
    s = load_settings({"PRESET": "smollm2-135m-instruct"})
    assert s.preset == "smollm2-135m-instruct" and s.torch_dtype == "auto"
    assert s.context_length == 8192 and s.served_model_name == "smollm2-135m-instruct"
    s = load_settings({"PRESET": "smollm2-135m-instruct", "TORCH_DTYPE": "float32",
                       "SERVED_MODEL_NAME": "mine"})
    assert s.torch_dtype == "float32" and s.served_model_name == "mine"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"TORCH_DTYPE": "float8"}, "TORCH_DTYPE"),
        ({"DEVICE_MAP": "everywhere"}, "DEVICE_MAP"),
        ({"PORT": "eighty"}, "PORT"),
        ({"ALLOW_REMOTE_FILES": "maybe"}, "ALLOW_REMOTE_FILES"),
        ({"MAX_MEMORY": "20GiB"}, "MAX_MEMORY"),
        ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE"),
        ({"CPU_LINEAR": "mkl"}, "CPU_LINEAR"),
        ({"PREFIX_CACHE_MIN_TOKENS": "-1"}, "PREFIX_CACHE_MIN_TOKENS"),
        ({"SPECULATIVE_NGRAM_TOKENS": "33"}, "SPECULATIVE_NGRAM_TOKENS"),
        ({"MAX_GRAMMAR_BYTES": "0"}, "MAX_GRAMMAR_BYTES"),
        ({"GRAMMAR_COMPILE_TIMEOUT_S": "0"}, "GRAMMAR_COMPILE_TIMEOUT_S"),
        ({"PRESET": "no-such-model"}, "unknown preset"),
    ],
)
def test_bad_configuration_is_a_clear_error(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        load_settings(env)
    assert issubclass(ConfigError, ValueError)


def test_kaito_flags_become_environment() -> None:
    env = flags_to_env([
        "--pipeline", "text-generation", "--torch_dtype", "bfloat16",
        "--pretrained_model_name_or_path", "/workspace/tfs/weights", "--chat_template",
        "/workspace/chat_templates/falcon.jinja", "--trust_remote_code", "--allow_remote_files",
        "--device_map", "auto", "--num_processes", "1",
    ])
    assert env["PIPELINE"] == "text-generation"
    assert env["TORCH_DTYPE"] == "bfloat16"
    assert env["MODEL_PATH"] == "/workspace/tfs/weights"
    assert env["CHAT_TEMPLATE"] == "/workspace/chat_templates/falcon.jinja"
    assert env["TRUST_REMOTE_CODE"] == "true" and env["ALLOW_REMOTE_FILES"] == "true"
    assert "TENSOR_PARALLEL" not in env  # 1 process: nothing to start
    s = load_settings(env)
    assert s.model_path == "/workspace/tfs/weights" and s.trust_remote_code


def test_quantization_setting_and_preset() -> None:
    assert load_settings({}).quantization == "none"
    assert load_settings({"QUANTIZATION": "int8"}).quantization == "int8"
    with pytest.raises(ConfigError, match="QUANTIZATION must be one of"):
        load_settings({"QUANTIZATION": "int3"})


def test_quantization_skip_is_a_list() -> None:
    s = load_settings({"QUANTIZATION_SKIP": "down_proj, o_proj"})
    assert s.quantization_skip == ("down_proj", "o_proj")


def test_adapter_settings() -> None:
    s = load_settings({})
    assert s.adapters_dir == "/mnt/adapter" and s.adapter_roots == () and s.default_adapter == ""
    assert s.admin_api_keys == () and s.adapter_allow_remote is False and s.max_loaded_adapters >= 1
    s = load_settings({"ADAPTERS_DIR": "/data/a", "ADAPTER_ROOTS": "/x:/y, /z", "DEFAULT_ADAPTER": "base",
                       "MAX_LOADED_ADAPTERS": "3", "ADMIN_API_KEYS": "k1,k2", "ADAPTER_ALLOW_REMOTE": "1"})
    assert s.adapters_dir == "/data/a" and s.adapter_roots == ("/x", "/y", "/z")
    assert s.default_adapter == "base" and s.max_loaded_adapters == 3
    assert s.admin_api_keys == ("k1", "k2") and s.adapter_allow_remote is True
    assert "k1" not in repr(s)
    with pytest.raises(ValueError, match="MAX_LOADED_ADAPTERS"):
        load_settings({"MAX_LOADED_ADAPTERS": "0"})


def test_cpu_kernel_settings() -> None:
    s = load_settings({})
    assert s.cpu_linear == "auto" and s.kernel_cache_dir.endswith(".cache/inferbox")
    s = load_settings({"CPU_LINEAR": "torch", "KERNEL_CACHE_DIR": "/var/cache/kernels"})
    assert s.cpu_linear == "torch" and s.kernel_cache_dir == "/var/cache/kernels"
    assert load_settings({"CPU_LINEAR": "measure"}).cpu_linear == "measure"  # auto's old name


def test_tensor_parallel_settings_and_refusals() -> None:
    """TENSOR_PARALLEL > 1 serves the chat engine in lock-step; what it cannot split is refused at
    start, each with the reason."""
    assert load_settings({}).tensor_parallel == 1
    s = load_settings({"TENSOR_PARALLEL": "2", "RANK": "1", "LOCAL_RANK": "1",
                       "TENSOR_PARALLEL_TIMEOUT_S": "30"})
    assert (s.tensor_parallel, s.rank, s.local_rank, s.tensor_parallel_timeout_s) == (2, 1, 1, 30.0)
    with pytest.raises(ConfigError, match="TENSOR_PARALLEL must be at least 1"):
        load_settings({"TENSOR_PARALLEL": "0"})
    with pytest.raises(ConfigError, match="TENSOR_PARALLEL="):
        load_settings({"TENSOR_PARALLEL": "two"})
    with pytest.raises(ConfigError, match="RANK=2 is not a rank of TENSOR_PARALLEL=2"):
        load_settings({"TENSOR_PARALLEL": "2", "RANK": "2"})
    for env, reason in (({"QUANTIZATION": "int8"}, "quantized layers are not split"),
                        ({"MODEL_KIND": "embedding"}, "only the chat engine"),
                        ({"DEFAULT_ADAPTER": "sql"}, "LoRA adapters are not split"),
                        ({"MAX_MEMORY": "0=20GiB"}, "MAX_MEMORY"),
                        ({"CPU_LINEAR": "onednn"}, "do not take sharded weights")):
        with pytest.raises(ConfigError, match=reason):
            load_settings({"TENSOR_PARALLEL": "2", **env})


def test_a_launcher_world_size_is_the_tensor_parallel_size() -> None:
    """torchrun and `accelerate launch --num_processes N` start N processes with WORLD_SIZE=N and a
    RANK each: every one is a rank of one server."""
    assert load_settings({"WORLD_SIZE": "1"}).tensor_parallel == 1
    s = load_settings({"WORLD_SIZE": "2", "RANK": "1"})
    assert (s.tensor_parallel, s.rank) == (2, 1)
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 but TENSOR_PARALLEL=4"):
        load_settings({"WORLD_SIZE": "2", "TENSOR_PARALLEL": "4"})
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        load_settings({"WORLD_SIZE": "two"})


def test_gunicorn_reads_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn's configuration is the settings object's, not a second reading of the environment."""
    import importlib

    monkeypatch.setenv("PORT", "5123")
    monkeypatch.setenv("WORKER_TIMEOUT", "300")
    monkeypatch.setenv("THREADS", "8")
    from server import gunicorn_conf

    conf = importlib.reload(gunicorn_conf)
    assert (conf.bind, conf.timeout, conf.threads, conf.graceful_timeout) == ("0.0.0.0:5123", 300, 8, 30)


def test_adapter_strengths_are_read_for_the_adapters_found(tmp_path: Path) -> None:
    """Kaito names each adapter's strength by a variable of the adapter's own name."""
    for name in ("sql", "chat"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text("{}")
        (tmp_path / name / "adapter_model.safetensors").write_bytes(b"")
    s = load_settings({"ADAPTERS_DIR": str(tmp_path), "sql": "0.5", "other": "2"})
    assert s.adapter_strengths == {"sql": 0.5}
    with pytest.raises(ConfigError, match="adapter strength chat='x' is not a number"):
        load_settings({"ADAPTERS_DIR": str(tmp_path), "chat": "x"})
