"""Turn a dictionary of Hugging Face `generate` keyword arguments into `GenerationParams`.

Every dialect maps its own fields onto `generate` names and calls `build_params`, so validation
(unknown keys, types, ranges, length limits) lives in exactly one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from transformers import GenerationConfig

from server.engine.errors import InvalidParams
from server.engine.request import GenerationParams

# Options a remote client may not set: internal bookkeeping, Python objects, or assisted decoding
# that needs a second model. (Prompt lookup needs none: the engine drafts from the prompt itself.)
FORBIDDEN = {
    "_from_model_config", "transformers_version", "compile_config", "continuous_batching_config",
    "constraints", "force_words_ids", "cache_config", "is_assistant", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_early_exit",
    "assistant_lookbehind", "target_lookbehind",
    "assistant_ensemble_weight", "speculation_type", "use_mtp", "disable_compile",
    "prefill_chunk_size", "cache_implementation", "max_cache_len", "decoder_start_token_id",
    "token_healing", "guidance_scale", "low_memory",
}
ALLOWED = (set(GenerationConfig().to_dict()) - FORBIDDEN) | {"seed", "stop", "logprobs", "top_logprobs"}

MAX_BEAMS = 16
MAX_SEQUENCES = 16
MAX_DRAFT_TOKENS = 32
MAX_DRAFT_NGRAM = 8


class _Typed(BaseModel):
    """Types and ranges of the options we interpret; any other allowed key passes through."""

    model_config = ConfigDict(extra="allow", strict=True)

    max_length: StrictInt | None = Field(None, ge=1)
    max_new_tokens: StrictInt | None = Field(None, ge=1)
    min_length: StrictInt | None = Field(None, ge=0)
    min_new_tokens: StrictInt | None = Field(None, ge=0)
    do_sample: StrictBool | None = None
    early_stopping: StrictBool | Literal["never"] | None = None
    num_beams: StrictInt | None = Field(None, ge=1, le=MAX_BEAMS)
    num_beam_groups: StrictInt | None = Field(None, ge=1, le=MAX_BEAMS)
    num_return_sequences: StrictInt | None = Field(None, ge=1, le=MAX_SEQUENCES)
    temperature: float | None = Field(None, ge=0)
    top_k: StrictInt | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    typical_p: float | None = Field(None, gt=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    length_penalty: float | None = None
    no_repeat_ngram_size: StrictInt | None = Field(None, ge=0)
    diversity_penalty: float | None = Field(None, ge=0)
    max_time: float | None = Field(None, gt=0)
    eos_token_id: StrictInt | list[StrictInt] | None = None
    pad_token_id: StrictInt | None = None
    bos_token_id: StrictInt | None = None
    stop_strings: str | list[str] | None = None
    stop: str | list[str] | None = None
    bad_words_ids: list[list[StrictInt]] | None = None
    suppress_tokens: list[StrictInt] | None = None
    begin_suppress_tokens: list[StrictInt] | None = None
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    use_cache: StrictBool | None = None
    output_scores: StrictBool | None = None
    output_logits: StrictBool | None = None
    return_dict_in_generate: StrictBool | None = None
    output_attentions: StrictBool | None = None
    output_hidden_states: StrictBool | None = None
    renormalize_logits: StrictBool | None = None
    remove_invalid_values: StrictBool | None = None
    watermarking_config: dict[str, Any] | None = None
    sequence_bias: list[tuple[list[StrictInt], float]] | None = Field(None, min_length=1)
    epsilon_cutoff: float | None = Field(None, ge=0, lt=1)
    eta_cutoff: float | None = Field(None, ge=0, lt=1)
    top_h: float | None = Field(None, gt=0, le=1)
    encoder_repetition_penalty: float | None = Field(None, gt=0)
    exponential_decay_length_penalty: tuple[StrictInt, float] | None = None
    encoder_no_repeat_ngram_size: StrictInt | None = Field(None, ge=0)
    forced_bos_token_id: StrictInt | None = None
    forced_eos_token_id: StrictInt | list[StrictInt] | None = None
    prompt_lookup_num_tokens: StrictInt | None = Field(None, ge=0, le=MAX_DRAFT_TOKENS)
    max_matching_ngram_size: StrictInt | None = Field(None, ge=1, le=MAX_DRAFT_NGRAM)


@dataclass(frozen=True)
class ModelLimits:
    """What `build_params` needs to know about the served model."""

    context_length: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    vocab_size: int
    generation_defaults: dict[str, Any]  # the model's generation_config.json, then the preset's


# The options GenerationParams names explicitly; the rest go to `extra`.
_NAMED = {
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "temperature",
    "top_k", "top_p", "typical_p", "min_p", "repetition_penalty", "no_repeat_ngram_size",
    "eos_token_id", "pad_token_id", "stop_strings", "stop", "seed", "num_return_sequences",
    "logprobs", "top_logprobs", "bos_token_id", "prompt_lookup_num_tokens", "max_matching_ngram_size",
    # these only shape generate's return value, which the engine always asks for itself
    "output_scores", "output_logits", "return_dict_in_generate", "output_attentions",
    "output_hidden_states", "use_cache",
}


# Options holding token ids, checked against the vocabulary (generate would index out of bounds).
TOKEN_ID_OPTIONS = ("bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id",
                    "forced_eos_token_id", "bos_token_id")


def _ints(value: Any) -> list[int]:
    """Every integer inside a nested list/int value (bools excluded)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [i for v in value for i in _ints(v)]
    return []


def _format_error(exc: ValidationError, name: Callable[[str], str]) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(name(str(p)) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def build_params(
    client: dict[str, Any],
    prompt_tokens: int,
    limits: ModelLimits,
    dialect_defaults: dict[str, Any] | None = None,
    names: Mapping[str, str] | None = None,
) -> GenerationParams:
    """Merge model defaults < dialect defaults < the client's values, then validate. `names`: the
    dialect's names for the engine's options (OpenAI's `max_tokens` for `max_new_tokens`, and for
    `generate_kwargs` itself), which the error messages use."""
    def name(key: str) -> str:
        return (names or {}).get(key, key)

    kwargs_name = name("generate_kwargs")
    if not isinstance(client, dict):
        raise InvalidParams(f"{kwargs_name} must be a JSON object")
    client = {k: v for k, v in client.items() if v is not None}  # null means "not given"
    unknown = sorted(k for k in client if k not in ALLOWED)
    if unknown:
        raise InvalidParams(
            f"unknown or unsupported {kwargs_name} key(s): {', '.join(unknown)}"
        )
    try:
        _Typed.model_validate(client)
    except ValidationError as exc:
        raise InvalidParams(f"invalid {kwargs_name}: {_format_error(exc, name)}") from None

    merged: dict[str, Any] = {}
    merged.update({k: v for k, v in limits.generation_defaults.items() if k in ALLOWED})
    merged.update(dialect_defaults or {})
    merged.update(client)
    for key in ("eos_token_id", "pad_token_id"):
        if merged.get(key) is None:
            merged.pop(key, None)

    # lengths: the client's max_new_tokens wins over any max_length (as in transformers)
    if client.get("max_new_tokens") is not None or (
        "max_new_tokens" in merged and client.get("max_length") is None
    ):
        max_new = int(merged["max_new_tokens"])
    elif merged.get("max_length") is not None:
        max_new = int(merged["max_length"]) - prompt_tokens
        if max_new < 1:
            raise InvalidParams(
                f"the prompt is {prompt_tokens} tokens but {name('max_length')} is {merged['max_length']}; "
                f"raise {name('max_length')} or set {name('max_new_tokens')}"
            )
    else:  # nobody chose: a moderate default that fits the context
        max_new = max(1, min(256, limits.context_length - prompt_tokens))
    if prompt_tokens + max_new > limits.context_length:
        raise InvalidParams(
            f"prompt ({prompt_tokens} tokens) + {name('max_new_tokens')} ({max_new}) exceeds the model's "
            f"context length of {limits.context_length} tokens"
        )
    if merged.get("min_new_tokens") is not None and (client.get("min_new_tokens") is not None
                                                     or client.get("min_length") is None):
        min_new = int(merged["min_new_tokens"])
    else:
        min_new = max(0, int(merged.get("min_length") or 0) - prompt_tokens)
    min_new = min(min_new, max_new)

    temperature = float(merged.get("temperature", 1.0) if merged.get("temperature") is not None else 1.0)
    do_sample = bool(merged.get("do_sample", False))
    if temperature == 0.0:  # the common convention for greedy decoding
        do_sample, temperature = False, 1.0

    eos = merged.get("eos_token_id")
    eos_ids = tuple(eos if isinstance(eos, list) else [eos]) if eos is not None else limits.eos_token_ids
    for tid in (*eos_ids, merged.get("pad_token_id", limits.pad_token_id)):
        if not 0 <= int(tid) < limits.vocab_size:
            raise InvalidParams(f"token id {tid} is outside the vocabulary (size {limits.vocab_size})")
    for key in TOKEN_ID_OPTIONS:
        for tid in _ints(client.get(key)):
            if not 0 <= tid < limits.vocab_size:
                raise InvalidParams(f"{name(key)}: token id {tid} is outside the vocabulary "
                                    f"(size {limits.vocab_size})")
        if key in ("bad_words_ids", "suppress_tokens", "begin_suppress_tokens") and client.get(key) == []:
            raise InvalidParams(f"{name(key)} must not be empty (leave it out instead)")
    if "bad_words_ids" in client and any(not seq for seq in client["bad_words_ids"]):
        raise InvalidParams("bad_words_ids must not contain an empty list")

    stop: list[str] = []
    for key in ("stop_strings", "stop"):
        value = merged.get(key)
        if value:
            stop.extend([value] if isinstance(value, str) else value)
    if any(not s for s in stop):
        raise InvalidParams("stop strings must not be empty")

    extra = {k: v for k, v in merged.items() if k not in _NAMED and v is not None}
    params = GenerationParams(
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        do_sample=do_sample,
        temperature=temperature,
        top_k=int(merged.get("top_k") or 0),
        top_p=float(merged.get("top_p") if merged.get("top_p") is not None else 1.0),
        typical_p=float(merged.get("typical_p") if merged.get("typical_p") is not None else 1.0),
        min_p=float(merged.get("min_p") or 0.0),
        repetition_penalty=float(merged.get("repetition_penalty") or 1.0),
        no_repeat_ngram_size=int(merged.get("no_repeat_ngram_size") or 0),
        eos_token_ids=tuple(int(t) for t in eos_ids),
        pad_token_id=int(merged.get("pad_token_id", limits.pad_token_id)),
        stop=tuple(stop),
        seed=merged.get("seed"),
        num_return_sequences=int(merged.get("num_return_sequences") or 1),
        logprobs=bool(merged.get("logprobs") or merged.get("top_logprobs")),
        top_logprobs=int(merged.get("top_logprobs") or 0),
        draft_tokens=int(merged.get("prompt_lookup_num_tokens") or 0),
        draft_ngram=int(merged.get("max_matching_ngram_size") or 2),
        extra=tuple(sorted(extra.items(), key=lambda kv: kv[0])),
    )
    _check_with_transformers(params, kwargs_name)
    return params


def _check_with_transformers(params: GenerationParams, kwargs_name: str = "generate_kwargs") -> None:
    """Let transformers reject combinations it cannot run (e.g. beams < return sequences)."""
    import warnings

    kwargs = params.generate_kwargs()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = GenerationConfig(**kwargs)
            config.validate()
    except Exception as exc:  # any rejection by transformers is about these values
        raise InvalidParams(f"invalid {kwargs_name}: {type(exc).__name__}: {exc}") from None
    beams = int(kwargs.get("num_beams") or 1)
    if not params.do_sample and params.num_return_sequences > beams:
        raise InvalidParams(
            "num_return_sequences > 1 needs do_sample=true or num_beams >= num_return_sequences"
        )
