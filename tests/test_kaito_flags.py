"""Kaito's launch flags: mapped, ignored only where they change nothing, otherwise refused."""

from __future__ import annotations

import pytest

from server.config import ConfigError, load_settings
from server.kaito_flags import NO_EFFECT_SWITCHES, NO_EFFECT_VALUES, flags_to_env, ignored_flags


def test_load_in_8bit_becomes_int8() -> None:
    env = flags_to_env(["--pretrained_model_name_or_path", "/workspace/tfs/weights", "--load_in_8bit"])
    assert env["QUANTIZATION"] == "int8"
    assert load_settings(env).quantization == "int8"


@pytest.mark.parametrize(("argv", "want"), [
    (["--load_in_4bit"], "int4"),
    (["--load_in_8bit", "True"], "int8"),
    (["--load_in_8bit", "false"], None),
    (["--quantization", "fp8"], "fp8"),
    (["--load_in_8bit", "--quantization", "int8"], "int8"),
])
def test_quantization_flags(argv: list[str], want: str | None) -> None:
    assert flags_to_env(argv).get("QUANTIZATION") == want


@pytest.mark.parametrize(("argv", "needle"), [
    (["--load_in_8bit", "--load_in_4bit"], "exclude each other"),
    (["--load_in_8bit", "--quantization", "int4"], "contradicts"),
    (["--revision", "refs/pr/1"], "--revision"),
    (["--from_tf", "true"], "TensorFlow"),
    (["--from_tf"], "TensorFlow"),
    (["--attn_implementation", "eager"], "--attn_implementation"),
    (["--load_in_8"], "--load_in_8"),  # no prefix matching: a typo is refused, not guessed
    (["--trust_remote_code", "perhaps"], "not a boolean"),
])
def test_flags_that_change_the_model_are_refused(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        flags_to_env(argv)


def test_flags_without_effect_are_listed_for_a_warning() -> None:
    argv = ["--revision", "main", "--from_tf", "false", "--cache_dir", "/tmp/c", "--force_download",
            "--num_machines", "1"]
    env = flags_to_env(argv)
    assert ignored_flags(argv) == ["--cache_dir", "--num_machines", "--force_download"]
    assert "QUANTIZATION" not in env
    # every ignored flag is one that cannot change the served model
    assert {"cache_dir", "num_machines", "force_download"} <= {*NO_EFFECT_VALUES, *NO_EFFECT_SWITCHES}


def test_num_processes_is_the_tensor_parallel_size() -> None:
    """accelerate's `--num_processes N` is N ranks of one model: TENSOR_PARALLEL=N, which
    `python -m server` starts; 1 process is what inferbox does anyway."""
    env = flags_to_env(["--num_processes", "1", "--num_machines", "1"])
    assert "TENSOR_PARALLEL" not in env
    assert "--num_processes" not in ignored_flags(["--num_processes", "1", "--num_machines", "1"])
    assert load_settings({}).tensor_parallel == 1
    env = flags_to_env(["--num_processes", "4", "--gpu_ids", "all"])
    assert env["TENSOR_PARALLEL"] == "4"
    assert "num_processes" not in NO_EFFECT_VALUES
    assert load_settings(env).tensor_parallel == 4


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_num_processes_must_be_a_positive_count(value: str) -> None:
    with pytest.raises(ConfigError, match="--num_processes must be"):
        flags_to_env(["--num_processes", value])


def test_python_m_server_refuses_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher exits with the reason before gunicorn starts (no traceback, no exec)."""
    from server import __main__ as launcher

    monkeypatch.setattr(launcher.os, "execvp", lambda *a: pytest.fail("gunicorn must not start"))
    monkeypatch.setattr(launcher.os, "environ", {})
    with pytest.raises(SystemExit) as exc:
        launcher.main(["--load_in_8bit", "--load_in_4bit"])
    assert "refusing to start" in str(exc.value.code) and "exclude each other" in str(exc.value.code)
