"""One frozen settings object, built from defaults < preset < environment.

Kaito-style command-line flags (`python -m server --torch_dtype ...`) are translated into the same
environment variables before gunicorn starts, so the worker reads one source of truth.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from server.adapters.paths import scan
from server.env_vars import ENV_VARS
from server.errors import ConfigError
from server.kinds.deployment import read_deployment
from server.presets import Preset, load_preset

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRESET = "smollm2-135m-instruct"
DEFAULT_MODEL_PATH = str(REPO_ROOT / "models" / DEFAULT_PRESET)
DEFAULT_KERNEL_CACHE_DIR = str(Path.home() / ".cache" / "inferbox")

DTYPES = ("auto", "float32", "float16", "bfloat16")
MODEL_KINDS = ("chat", "embedding", "handler")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "cuda")
QUANTIZATIONS = ("none", "int8", "int4", "fp8")  # server/model/quantize.py serves them


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment (docs/reference/configuration.md, generated
    from server/env_vars.py)."""

    model_path: str = DEFAULT_MODEL_PATH
    preset: str | None = None
    served_model_name: str = DEFAULT_PRESET
    torch_dtype: str = "auto"
    quantization: str = "none"
    quantization_skip: tuple[str, ...] = ()  # module names kept in full precision (besides lm_head)
    device_map: str = "auto"
    tensor_parallel: int = 1  # ranks one model is split across (docs/guides/tensor-parallelism.md)
    tensor_parallel_timeout_s: float = 60.0  # the longest any collective may wait for another rank
    rank: int | None = None  # this process's rank (torchrun's RANK; None: no launcher set one); 0 serves HTTP
    local_rank: int = 0  # its GPU on this machine (LOCAL_RANK)
    local_world_size: int = 0  # ranks on this machine (LOCAL_WORLD_SIZE; 0: all of them)
    max_memory: dict[str, str] = field(default_factory=dict)
    chat_template: str | None = None
    pipeline: str = "text-generation"
    allow_remote_files: bool = False
    trust_remote_code: bool = False
    context_length: int | None = None
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    host: str = "0.0.0.0"
    port: int = 5000
    threads: int = 64  # gunicorn's HTTP threads (generation runs on the engine's thread)
    graceful_timeout: int = 30  # seconds gunicorn gives a SIGTERM'd worker (the drain fits in it)
    worker_timeout: int = 120  # seconds of worker silence before gunicorn restarts it (not request length)
    max_body_bytes: int = 1_048_576
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_prefill_tokens: int = 4096
    batch_window_ms: float = 5.0
    prefix_cache_min_tokens: int = 16
    speculative_ngram_tokens: int = 0  # prompt-lookup drafts per step for every request (0: off)
    max_queued_requests: int = 256
    request_timeout_s: float = 600.0
    torch_threads: int = 0
    cpu_linear: str = "auto"
    kernel_cache_dir: str = DEFAULT_KERNEL_CACHE_DIR  # CPU_LINEAR=auto's timed choice; "off": never cached
    log_level: str = "info"
    # security and operations (docs/guides/security-operations.md)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    open_paths: tuple[str, ...] = ("/", "/health", "/metrics", "/openapi.json", "/info")
    metrics_require_key: bool = False
    rate_limit: str = ""
    rate_limit_storage_uri: str = "memory://"
    max_input_tokens: int = 0
    # structured outputs (docs/guides/structured-output.md)
    max_grammar_bytes: int = 65_536
    grammar_compile_timeout_s: float = 5.0
    drain_delay_s: float = 5.0
    # model kinds (docs/api/embeddings.md, docs/api/mosaicml.md): chat (the generation engine),
    # embedding (sentence-transformers) or a user's MosaicML-style handler class
    model_kind: str = "chat"
    model_handler: str | None = None
    model_parameters: dict[str, Any] = field(default_factory=dict)
    model_handler_dir: str | None = None
    pooling_include_prompt: bool | None = None
    embedding_dimensions: tuple[int, ...] = ()
    embed_packing: bool = True  # several inputs a row, no padding (server/kinds/packing.py)
    max_client_batch_size: int = 64
    # LoRA adapters (docs/guides/adapters.md); server/adapters/ serves them
    adapters_dir: str = "/mnt/adapter"  # Kaito mounts each adapter at /mnt/adapter/<name>/
    # Kaito's strength of each adapter found in ADAPTERS_DIR: a variable named after it (default 1.0)
    adapter_strengths: dict[str, float] = field(default_factory=dict)
    adapter_roots: tuple[str, ...] = ()  # more folders `local` adapter paths may point into
    default_adapter: str = ""  # "" = `combined` when ADAPTERS_DIR holds adapters, else `base`
    max_loaded_adapters: int = 16
    admin_api_keys: tuple[str, ...] = field(default=(), repr=False)  # none = admin endpoints refused
    adapter_allow_remote: bool = False  # `hub` adapters: the local Hugging Face cache only


def _keys_file(path: str) -> tuple[str, ...]:
    """One key per line; blank lines and `#` comments ignored (a mounted Kubernetes Secret works)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read API_KEYS_FILE: {exc.strerror}") from None
    return tuple(s for s in (ln.split("#", 1)[0].strip() for ln in lines) if s)


def _from_preset(preset: Preset) -> dict[str, Any]:
    kind: dict[str, Any] = {"model_kind": preset.kind}
    if preset.embedding is not None:
        kind["pooling_include_prompt"] = preset.embedding.include_prompt
        kind["embedding_dimensions"] = tuple(preset.embedding.dimensions)
    if preset.source != "hub":  # a model from a PyPI package: `make model` / `make embed-model` put it here
        kind["model_path"] = str(REPO_ROOT / "models" / preset.name)
    return {
        **kind,
        "preset": preset.name,
        "served_model_name": preset.name,
        "torch_dtype": preset.dtype,
        "quantization": preset.quantization,
        "chat_template": preset.chat_template,
        "context_length": preset.context_length,
        "generation_defaults": dict(preset.generation),
        "trust_remote_code": preset.trust_remote_code,
    }


def _adapter_strengths(env: Mapping[str, str], adapters_dir: str) -> dict[str, float]:
    """Kaito's adapter strengths: for each adapter in ADAPTERS_DIR, a variable named after it."""
    out: dict[str, float] = {}
    for name, _ in scan(Path(adapters_dir)):
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"adapter strength {name}={raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"adapter strength {name}={raw!r} is not finite")
        out[name] = value
    return out


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    preset_name = env.get("PRESET") or None
    if preset_name:
        values.update(_from_preset(load_preset(preset_name)))
    for var, (name, parse, _) in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{var}={raw!r}: {exc}") from exc
    keys_file = env.get("API_KEYS_FILE")
    if keys_file:
        values["api_keys"] = tuple(dict.fromkeys((*values.get("api_keys", ()), *_keys_file(keys_file))))
    deployment = env.get("DEPLOYMENT_YAML")
    if deployment:  # a MosaicML deployment YAML: its handler, parameters and weights' local path
        for name, value in read_deployment(deployment).items():
            values.setdefault(name, value)  # explicit variables win over the YAML
    values["adapter_strengths"] = _adapter_strengths(env, values.get("adapters_dir", Settings.adapters_dir))
    world = env.get("WORLD_SIZE")  # torchrun / accelerate launch: one process per rank
    if world:
        try:
            size = int(world)
        except ValueError:
            raise ConfigError(f"WORLD_SIZE={world!r}: not an integer") from None
        if "tensor_parallel" not in values:
            values["tensor_parallel"] = size
        elif values["tensor_parallel"] != size:
            raise ConfigError(f"WORLD_SIZE={size} but TENSOR_PARALLEL={values['tensor_parallel']}: every "
                              "rank of the launcher is one tensor-parallel rank, so they must agree")
    if values.get("model_handler"):
        values["model_kind"] = "handler"
    settings = Settings(**values)
    _check(settings)
    return settings


# what tensor parallelism does not serve, and why (docs/guides/tensor-parallelism.md)
TENSOR_PARALLEL_REFUSALS: dict[str, str] = {
    "quantization": "QUANTIZATION: quantized layers are not split by transformers' tp_plan; serve the "
                    "model unquantized across the ranks, or quantized on one GPU",
    "model_kind": "MODEL_KIND: only the chat engine runs in lock-step across ranks; embedding models and "
                  "handlers fit one GPU and scale with replicas",
    "default_adapter": "DEFAULT_ADAPTER: LoRA adapters are not split across ranks (peft would load the "
                       "whole adapter on sharded layers); serve adapters with TENSOR_PARALLEL=1",
    "max_memory": "MAX_MEMORY: it places whole layers with DEVICE_MAP; under tensor parallelism each rank "
                  "holds its share of every layer on its own GPU",
    "cpu_linear": "CPU_LINEAR=onednn: the pinned oneDNN layers do not take sharded weights; leave it auto",
}


def _check_tensor_parallel(s: Settings) -> None:
    n = s.tensor_parallel
    refused = [name for name, bad in (
        ("quantization", s.quantization != "none"), ("model_kind", s.model_kind != "chat"),
        ("default_adapter", s.default_adapter not in ("", "base")), ("max_memory", bool(s.max_memory)),
        ("cpu_linear", s.cpu_linear == "onednn")) if bad]
    if refused:
        raise ConfigError(f"TENSOR_PARALLEL={n} cannot serve with {TENSOR_PARALLEL_REFUSALS[refused[0]]}")
    if s.rank is not None and not 0 <= s.rank < n:
        raise ConfigError(f"RANK={s.rank} is not a rank of TENSOR_PARALLEL={n} (0..{n - 1})")
    if s.tensor_parallel_timeout_s <= 0:
        raise ConfigError("TENSOR_PARALLEL_TIMEOUT_S must be positive")


def _check(s: Settings) -> None:
    if s.torch_dtype not in DTYPES:
        raise ConfigError(f"TORCH_DTYPE must be one of {', '.join(DTYPES)}; got {s.torch_dtype!r}")
    if s.quantization not in QUANTIZATIONS:
        raise ConfigError(f"QUANTIZATION must be one of {', '.join(QUANTIZATIONS)}; got {s.quantization!r}")
    if s.device_map not in DEVICE_MAPS:
        raise ConfigError(f"DEVICE_MAP must be one of {', '.join(DEVICE_MAPS)}; got {s.device_map!r}")
    if s.tensor_parallel < 1:
        raise ConfigError(f"TENSOR_PARALLEL must be at least 1; got {s.tensor_parallel}")
    if s.tensor_parallel > 1:
        _check_tensor_parallel(s)
    if s.cpu_linear not in ("auto", "measure", "onednn", "torch"):  # measure: auto's old name
        raise ConfigError(f"CPU_LINEAR must be auto, onednn or torch; got {s.cpu_linear!r}")
    if s.model_kind not in MODEL_KINDS:
        raise ConfigError(f"MODEL_KIND must be one of {', '.join(MODEL_KINDS)}; got {s.model_kind!r}")
    if s.model_kind == "handler" and not s.model_handler:
        raise ConfigError("MODEL_KIND=handler needs MODEL_HANDLER=pkg.module:Class (or DEPLOYMENT_YAML)")
    if s.pipeline not in ("text-generation", "conversational"):
        raise ConfigError(f"PIPELINE must be text-generation or conversational; got {s.pipeline!r}")
    for name in ("threads", "max_batch_size", "max_batch_tokens", "max_prefill_tokens", "max_body_bytes",
                 "max_queued_requests", "max_client_batch_size", "max_loaded_adapters", "max_grammar_bytes"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name.upper()} must be at least 1")
    if s.max_input_tokens < 0 or s.drain_delay_s < 0 or s.prefix_cache_min_tokens < 0:
        raise ConfigError("MAX_INPUT_TOKENS, DRAIN_DELAY_S and PREFIX_CACHE_MIN_TOKENS must not be negative")
    if not 0 <= s.speculative_ngram_tokens <= 32:
        raise ConfigError("SPECULATIVE_NGRAM_TOKENS must be between 0 (off) and 32")
    if s.grammar_compile_timeout_s <= 0:
        raise ConfigError("GRAMMAR_COMPILE_TIMEOUT_S must be positive")
    if s.rate_limit:
        from limits import parse_many

        try:
            parse_many(s.rate_limit)
        except ValueError as exc:
            raise ConfigError(f"RATE_LIMIT={s.rate_limit!r} is not in Flask-Limiter's notation "
                              f"(e.g. 10/second;100/minute): {exc}") from None


def settings_fields() -> list[str]:
    return [f.name for f in fields(Settings)]
