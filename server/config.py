"""One frozen settings object, built from defaults < preset < environment.

Kaito-style command-line flags (`python -m server --torch_dtype ...`) are translated into the same
environment variables before gunicorn starts, so the worker reads one source of truth.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from server.adapters.paths import scan
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
    from ENV_VARS below)."""

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


# env var -> (settings field, parser)
def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {value!r}")


def _max_memory(value: str) -> dict[str, str]:
    """`0=20GiB,1=20GiB,cpu=64GiB` -> {"0": "20GiB", ...} (accelerate's max_memory)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, sep, size = part.partition("=")
        if not sep or not key.strip() or not size.strip():
            raise ConfigError(f"MAX_MEMORY entries look like 0=20GiB,cpu=64GiB; got {part!r}")
        out[key.strip()] = size.strip()
    return out


def _csv(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _paths(value: str) -> tuple[str, ...]:
    """A colon- or comma-separated list of folders (ADAPTER_ROOTS)."""
    return tuple(p.strip() for p in re.split(r"[:,]", value) if p.strip())


def _json_object(value: str) -> dict[str, Any]:
    import json

    try:
        out = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"not valid JSON: {exc}") from None
    if not isinstance(out, dict):
        raise ConfigError("must be a JSON object")
    return out


def _keys_file(path: str) -> tuple[str, ...]:
    """One key per line; blank lines and `#` comments ignored (a mounted Kubernetes Secret works)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read API_KEYS_FILE: {exc.strerror}") from None
    return tuple(s for s in (ln.split("#", 1)[0].strip() for ln in lines) if s)


class Var(NamedTuple):
    """One environment variable: the settings field it sets, how its text is read, what it means
    (the configuration reference is generated from these: tools/settings_doc.py)."""

    field: str
    parse: Callable[[str], Any]
    doc: str


ENV_VARS: dict[str, Var] = {
    "MODEL_PATH": Var("model_path", str,
                "a local Hugging Face folder (safetensors or bin), a `.gguf` file, or (with "
                "`ALLOW_REMOTE_FILES`) a hub id"),
    "SERVED_MODEL_NAME": Var("served_model_name", str,
                "the name reported to clients"),
    "TORCH_DTYPE": Var("torch_dtype", str,
                "`auto`, `float32`, `bfloat16`, `float16`. `auto`: the checkpoint's own dtype "
                "(`config.json`'s `dtype`) where the device computes it natively: on CUDA, and for "
                "bfloat16 checkpoints on CPUs with AMX (`amx_bf16`) or AVX512-BF16 (`avx512_bf16` in "
                "/proc/cpuinfo); float32 on other CPUs and for GGUF files. `/info` (`dtype`: name and "
                "reason) and the start-up log say which and why"),
    "QUANTIZATION": Var("quantization", str,
                "weight-only quantization at load: `none`, `int8`, `int4`, `fp8` (see \"Quantized "
                "weights\")"),
    "QUANTIZATION_SKIP": Var("quantization_skip", _csv,
                "comma-separated module names (or name parts, e.g. `down_proj`) kept in full precision "
                "besides the LM head"),
    "DEVICE_MAP": Var("device_map", str,
                "`auto`, `balanced`, `balanced_low_0`, `sequential`, `cpu`, `cuda`: accelerate shards the"
                " model over all visible GPUs"),
    "TENSOR_PARALLEL": Var("tensor_parallel", int,
                "ranks one model is split across by tensor parallelism; `python -m server` starts them "
                "(see \"Tensor parallelism\")"),
    "TENSOR_PARALLEL_TIMEOUT_S": Var("tensor_parallel_timeout_s", float,
                "the longest any collective waits for another rank before the server gives up (and exits)"),
    "RANK": Var("rank", int,
                "torchrun's: this process's tensor-parallel rank (0 serves HTTP); unset: `python -m "
                "server` starts the ranks itself"),
    "LOCAL_RANK": Var("local_rank", int,
                "torchrun's: this rank's GPU on its machine"),
    "LOCAL_WORLD_SIZE": Var("local_world_size", int,
                "torchrun's: ranks on this machine (CPU ranks share its cores); unset: all of them"),
    "MAX_MEMORY": Var("max_memory", _max_memory,
                "per-device limits for accelerate, e.g. `0=20GiB,1=20GiB,cpu=64GiB`"),
    "CHAT_TEMPLATE": Var("chat_template", str,
                "a Jinja chat template: a file path (absolute, or under `presets/`) or inline text"),
    "PIPELINE": Var("pipeline", str,
                "accepted for Kaito compatibility; one server serves both `prompt` and `messages`"),
    "ALLOW_REMOTE_FILES": Var("allow_remote_files", _bool,
                "allow downloading from a hub (otherwise local files only)"),
    "TRUST_REMOTE_CODE": Var("trust_remote_code", _bool,
                "allow model code shipped with the checkpoint"),
    "CONTEXT_LENGTH": Var("context_length", int,
                "maximum prompt + generated tokens"),
    "HOST": Var("host", str,
                "the address gunicorn listens on"),
    "PORT": Var("port", int,
                "the port gunicorn listens on (Kaito's `--port`)"),
    "THREADS": Var("threads", int,
                "gunicorn threads: concurrent clients waiting on the engine"),
    "GRACEFUL_TIMEOUT": Var("graceful_timeout", int,
                "seconds gunicorn waits for in-flight requests on shutdown"),
    "WORKER_TIMEOUT": Var("worker_timeout", int,
                "seconds of worker silence (not request length) before gunicorn restarts the worker"),
    "MAX_BODY_BYTES": Var("max_body_bytes", int,
                "larger request bodies get 413"),
    "MAX_BATCH_SIZE": Var("max_batch_size", int,
                "most sequences decoded together in one step"),
    "MAX_BATCH_TOKENS": Var("max_batch_tokens", int,
                "token budget of the running batch, counted with padding: rows x the longest row's prompt"
                " + `max_new_tokens`; waiting requests queue (FIFO) until they fit. A single request "
                "larger than the budget still runs, alone"),
    "MAX_PREFILL_TOKENS": Var("max_prefill_tokens", int,
                "most (padded) prompt tokens admitted in one prefill step; a flood of long prompts joins "
                "over several steps"),
    "BATCH_WINDOW_MS": Var("batch_window_ms", float,
                "when the engine is idle, how long it waits for simultaneous arrivals to share one "
                "prefill"),
    "PREFIX_CACHE_MIN_TOKENS": Var("prefix_cache_min_tokens", int,
                "shared prompt prefixes at least this long (a chat template's system prompt, few-shot "
                "examples) are computed once and reused by later prefills; 0 turns it off"),
    "SPECULATIVE_NGRAM_TOKENS": Var("speculative_ngram_tokens", int,
                "prompt-lookup drafts of up to this many tokens a step for every greedy request (0: off; "
                "a request's `prompt_lookup_num_tokens` overrides it)"),
    "MAX_QUEUED_REQUESTS": Var("max_queued_requests", int,
                "waiting requests beyond this get 503 with `Retry-After`"),
    "REQUEST_TIMEOUT_S": Var("request_timeout_s", float,
                "per-request deadline; generation stops with finish reason `timeout`"),
    "TORCH_THREADS": Var("torch_threads", int,
                "intra-op CPU threads"),
    "CPU_LINEAR": Var("cpu_linear", str,
                "CPU kernel of float32/bfloat16 linear layers: `auto` (time the model's decode steps with"
                " oneDNN and with `F.linear` at start-up, keep the faster per row bucket; `measure` is "
                "the same), `onednn` or `torch` (one kernel always)"),
    "KERNEL_CACHE_DIR": Var("kernel_cache_dir", str,
                "where `CPU_LINEAR=auto` caches its timed choice (one small JSON per CPU, threads, torch,"
                " model and dtype); `off`: time at every start. A folder that cannot be written only "
                "costs a re-time"),
    "LOG_LEVEL": Var("log_level", str,
                "logging level (prompts and outputs are never logged at any level)"),
    "API_KEYS": Var("api_keys", _csv,
                "comma-separated API keys; none = open (warning at start)"),
    "OPEN_PATHS": Var("open_paths", _csv,
                "paths open without a key (GET/HEAD only); with `/` open, the chat page's `/ui/app.js` "
                "and `/ui/app.css` are too"),
    "METRICS_REQUIRE_KEY": Var("metrics_require_key", _bool,
                "`true` removes `/metrics` from the open paths"),
    "RATE_LIMIT": Var("rate_limit", str,
                "per-key limit in Flask-Limiter notation, e.g. `10/second;200/minute`"),
    "RATE_LIMIT_STORAGE_URI": Var("rate_limit_storage_uri", str,
                "where limits are counted; `redis://host:port` to share across replicas"),
    "MAX_INPUT_TOKENS": Var("max_input_tokens", int,
                "longest prompt in tokens (400 above it); 0 = the model's context length"),
    "MAX_GRAMMAR_BYTES": Var("max_grammar_bytes", int,
                "largest output constraint, as grammar text (a JSON schema after conversion); 400 above "
                "it"),
    "GRAMMAR_COMPILE_TIMEOUT_S": Var("grammar_compile_timeout_s", float,
                "longest a constraint may take to compile (400 past it); llguidance's own size and lexer "
                "limits bound it too"),
    "DRAIN_DELAY_S": Var("drain_delay_s", float,
                "after SIGTERM, keep accepting (answering 503) this long before waiting for in-flight "
                "requests"),
    "MODEL_KIND": Var("model_kind", str,
                "`chat`, `embedding` or `handler` (set by `MODEL_HANDLER` / `DEPLOYMENT_YAML`)"),
    "MODEL_HANDLER": Var("model_handler", str,
                "a MosaicML-style handler class, `pkg.module:Class`"),
    "MODEL_PARAMETERS": Var("model_parameters", _json_object,
                "JSON object of the handler's constructor arguments"),
    "MODEL_HANDLER_DIR": Var("model_handler_dir", str,
                "a folder searched first for the handler's module"),
    "POOLING_INCLUDE_PROMPT": Var("pooling_include_prompt", _bool,
                "embeddings: `false` leaves an instruction out of the mean pooling (instructor)"),
    "EMBED_PACKING": Var("embed_packing", _bool,
                "embeddings: pack several inputs a row instead of padding (used only where the load-time "
                "check finds `encode`'s vectors)"),
    "MAX_CLIENT_BATCH_SIZE": Var("max_client_batch_size", int,
                "most inputs in one embedding / handler request"),
    "ADAPTERS_DIR": Var("adapters_dir", str,
                "folder of adapters (one subfolder each), loaded at start-up; Kaito's mount point"),
    "ADAPTER_ROOTS": Var("adapter_roots", _paths,
                "more folders (`:` or `,` separated) that `local` adapter paths and `lora_path` may point"
                " into"),
    "DEFAULT_ADAPTER": Var("default_adapter", str,
                "what a request that names no adapter gets: `combined`, `base` or an adapter's name"),
    "MAX_LOADED_ADAPTERS": Var("max_loaded_adapters", int,
                "adapters held at once; the least recently used one is unloaded beyond it"),
    "ADMIN_API_KEYS": Var("admin_api_keys", _csv,
                "comma-separated keys for `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`; none = "
                "both refused (403)"),
    "ADAPTER_ALLOW_REMOTE": Var("adapter_allow_remote", _bool,
                "`hub` adapters may be downloaded (otherwise the local Hugging Face cache only)"),
}

# read by load_settings besides ENV_VARS (documented with them)
OTHER_VARS: dict[str, str] = {
    "PRESET": "a preset name from `presets/` (dtype, chat template, context, generation defaults, "
              "quantization); read before the other variables, which win over it",
    "API_KEYS_FILE": "a file with one API key per line (`#` comments); adds to `API_KEYS`",
    "DEPLOYMENT_YAML": "a MosaicML deployment YAML: its handler, parameters and local `hf_path` (explicit "
                       "variables win over it)",
    "WORLD_SIZE": "torchrun's: the number of ranks; sets `TENSOR_PARALLEL` (they must agree)",
    "<adapter name>": "Kaito's strength of the adapter of that name in `ADAPTERS_DIR` (default 1.0)",
}


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
