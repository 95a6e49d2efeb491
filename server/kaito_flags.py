"""Kaito's transformers-runtime launch flags (`inference_api.py --pretrained_model_name_or_path ...`)
turned into inferbox's environment variables, so Kaito's command lines keep working.

Every flag Kaito's runtime accepts is handled one of three ways, and none is silently dropped:
- mapped onto a setting (`--torch_dtype` -> TORCH_DTYPE, `--load_in_8bit` -> QUANTIZATION=int8,
  accelerate's `--num_processes N` -> TENSOR_PARALLEL=N when N > 1, ...);
- ignored with a warning where it cannot change what is served (download and cache options, the
  adapter merge method (`combined` is always the exact strength-weighted sum), accelerate launcher
  options);
- refused at start, with the reason, where it would change what is served and inferbox cannot do
  it. Kaito passes flags it does not know on to `from_pretrained`, where they can change the model,
  so an unknown flag is refused too.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from server.config import ConfigError

# flag -> environment variable (the value is passed through)
VALUE_FLAGS: dict[str, str] = {
    "pretrained_model_name_or_path": "MODEL_PATH",
    "torch_dtype": "TORCH_DTYPE",
    "device_map": "DEVICE_MAP",
    "pipeline": "PIPELINE",
    "chat_template": "CHAT_TEMPLATE",
    "max_memory": "MAX_MEMORY",
    "preset": "PRESET",
    "served_model_name": "SERVED_MODEL_NAME",
    "port": "PORT",
    "quantization": "QUANTIZATION",
}
# boolean flag -> environment variable set to "true"
SWITCHES: dict[str, str] = {
    "allow_remote_files": "ALLOW_REMOTE_FILES",
    "trust_remote_code": "TRUST_REMOTE_CODE",
}
# Kaito's quantization switches -> QUANTIZATION (bitsandbytes there; optimum-quanto here)
QUANTIZATION_SWITCHES: dict[str, str] = {"load_in_8bit": "int8", "load_in_4bit": "int4"}
# accelerate's process count: N processes serving one model are N tensor-parallel ranks; 1 is what
# inferbox does anyway, so it maps to nothing.
PROCESS_COUNT_FLAG = "num_processes"
# No effect on what is served: where and how weights are downloaded or cached, loading-time
# reports, the adapter merge method (`combined` is peft's exact `cat` sum), accelerate launcher options.
NO_EFFECT_VALUES = ("cache_dir", "proxies", "combination_type", "num_machines", "gpu_ids", "mixed_precision")
NO_EFFECT_SWITCHES = ("force_download", "resume_download", "output_loading_info", "low_cpu_mem_usage")
# Change what is served, and cannot be honoured: refused with the reason.
REFUSED: dict[str, str] = {
    "from_tf": "TensorFlow checkpoints are not supported (transformers 5 has no TensorFlow); "
               "convert the checkpoint to safetensors",
    "state_dict": "weights are read from --pretrained_model_name_or_path only",
    "revision": "inferbox serves the folder at --pretrained_model_name_or_path; pin a hub revision "
                "in a preset (presets/*.yaml) and bake it into the image instead",
}
DEFAULT_VALUES = {"revision": "main"}  # Kaito's default: passing it changes nothing
REFUSED_SWITCHES = ("from_tf",)  # booleans: refused only when true


def _truthy(value: str | None) -> bool:
    """HfArgumentParser's booleans: `--flag`, `--flag true`, `--flag False`."""
    if value is None:
        return False
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"not a boolean: {value!r}")


def _process_count(value: str | None) -> int:
    """`--num_processes N`: accelerate's total process count over all machines."""
    if value is None:
        return 1
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"--num_processes must be a whole number; got {value!r}") from None
    if count < 1:
        raise ConfigError(f"--num_processes must be at least 1; got {count}")
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server", description="Start the inferbox server.",
                                     allow_abbrev=False)
    refused_values = (f for f in REFUSED if f not in REFUSED_SWITCHES)
    for flag in (*VALUE_FLAGS, PROCESS_COUNT_FLAG, *NO_EFFECT_VALUES, *refused_values):
        parser.add_argument(f"--{flag}", dest=flag, default=None)
    for flag in (*SWITCHES, *QUANTIZATION_SWITCHES, *NO_EFFECT_SWITCHES, *REFUSED_SWITCHES):
        parser.add_argument(f"--{flag}", dest=flag, nargs="?", const="true", default=None)
    return parser


def _flag_names(tokens: Iterable[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("-")]


def ignored_flags(argv: list[str]) -> list[str]:
    """The flags among `argv` that cannot change what is served (the launcher warns of them)."""
    args = _parse(argv)
    return [f"--{f}" for f in (*NO_EFFECT_VALUES, *NO_EFFECT_SWITCHES) if getattr(args, f) is not None]


def _parse(argv: list[str]) -> argparse.Namespace:
    args, unknown = _parser().parse_known_args(argv)
    if unknown:
        names = _flag_names(unknown) or unknown
        raise ConfigError(
            f"unsupported flag(s) {' '.join(names)}: Kaito passes unknown flags to from_pretrained, "
            "where they can change the model, so inferbox refuses them rather than ignore them"
        )
    for flag, reason in REFUSED.items():
        value = getattr(args, flag)
        if flag in REFUSED_SWITCHES:
            if _truthy(value):
                raise ConfigError(f"--{flag} is not supported: {reason}")
        elif value is not None and value != DEFAULT_VALUES.get(flag):
            raise ConfigError(f"--{flag} {value} is not supported: {reason}")
    return args


def flags_to_env(argv: list[str]) -> dict[str, str]:
    """Kaito-style flags -> environment variables. Raises ConfigError for a flag that would change
    what is served and cannot be honoured (flags without effect: `ignored_flags`)."""
    args = _parse(argv)
    env: dict[str, str] = {}
    for flag, var in VALUE_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            env[var] = value
    processes = _process_count(getattr(args, PROCESS_COUNT_FLAG))
    if processes > 1:
        env["TENSOR_PARALLEL"] = str(processes)
    for flag, var in SWITCHES.items():
        if _truthy(getattr(args, flag)):
            env[var] = "true"
    wanted = [q for flag, q in QUANTIZATION_SWITCHES.items() if _truthy(getattr(args, flag))]
    if len(wanted) > 1:
        raise ConfigError("--load_in_8bit and --load_in_4bit exclude each other")
    if wanted:
        if env.get("QUANTIZATION", wanted[0]) != wanted[0]:
            raise ConfigError(f"--quantization {env['QUANTIZATION']} contradicts --load_in_"
                              f"{wanted[0].removeprefix('int')}bit")
        env["QUANTIZATION"] = wanted[0]
    return env
