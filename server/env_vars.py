"""Every environment variable the server reads: the settings field each sets, how its text is
parsed, and what it means. The configuration reference (docs/reference/configuration.md) is
generated from these definitions; `server/config.py` reads them into `Settings`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from server.errors import ConfigError


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
    try:
        out = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"not valid JSON: {exc}") from None
    if not isinstance(out, dict):
        raise ConfigError("must be a JSON object")
    return out


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
