"""TGI / LoRAX wire types (requests validated by pydantic; responses documented for /openapi.json).

Ranges follow TGI's router validation (temperature > 0, 0 < top_p < 1, ...). Unknown parameters are
ignored, as TGI's serde does; LoRAX's extra fields are named so that they are rejected or honoured
explicitly by tgi.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

MAX_BEST_OF = 8
MAX_STOP_SEQUENCES = 16
MAX_TOP_N_TOKENS = 5
MAX_MERGED = 16  # adapters in one LoRAX merged_adapters recipe
DEFAULT_MAX_NEW_TOKENS = 100  # TGI's default when the client sends none
# What /openapi.json advertises for fields whose only supported value is "off" (the handler rejects
# the rest with a clearer message than a schema error).
ZERO = {"minimum": 0, "maximum": 0}


def _object_or_null(shape: dict[str, Any]) -> Any:
    """A json_schema_extra that advertises `shape` (or null) in place of pydantic's free-form dict."""
    def update(schema: dict[str, Any]) -> None:
        schema.pop("anyOf", None)
        schema["anyOf"] = [shape, {"type": "null"}]
    return update


GRAMMAR = _object_or_null({"type": "object", "required": ["type", "value"], "properties": {
    "type": {"enum": ["json", "json_object", "regex"]},
    "value": {"anyOf": [{"type": "object"}, {"type": "string", "minLength": 1}]}}})
RESPONSE_FORMAT = _object_or_null({"type": "object", "required": ["type"], "properties": {
    "type": {"enum": ["json_object", "json_schema", "text"]}, "schema": {"type": "object"}}})


class MergedAdapters(BaseModel):
    """LoRAX's `merged_adapters`: a weighted merge of adapters for this request (cached per recipe)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    ids: list[Annotated[str, Field(min_length=1)]] = Field(..., min_length=1, max_length=MAX_MERGED)
    weights: list[float] = Field(..., min_length=1, max_length=MAX_MERGED,
                                 description="One per id (the same length as `ids`).")
    merge_strategy: Literal["linear", "ties", "dare_linear", "dare_ties"] | None = "linear"
    density: float = Field(1.0, ge=0, le=1, description="Share of each delta kept (ties, dare_*).")
    majority_sign_method: Literal["total", "frequency"] | None = "total"


class Parameters(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    best_of: StrictInt | None = Field(None, ge=1, le=MAX_BEST_OF)
    decoder_input_details: StrictBool | None = False
    details: StrictBool | None = False
    do_sample: StrictBool | None = False
    max_new_tokens: StrictInt | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="Only 0 is supported.",
                                            json_schema_extra=ZERO)
    return_full_text: StrictBool | None = False
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    stop: list[Annotated[str, Field(min_length=1)]] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    temperature: float | None = Field(None, gt=0)
    top_k: StrictInt | None = Field(None, gt=0)
    top_n_tokens: StrictInt | None = Field(None, ge=0, le=MAX_TOP_N_TOKENS)
    top_p: float | None = Field(None, gt=0, lt=1)
    truncate: StrictInt | None = Field(None, ge=1)
    typical_p: float | None = Field(None, gt=0, lt=1)
    watermark: StrictBool | None = False
    grammar: dict[str, Any] | None = Field(
        None, description="Structured output, enforced: {\"type\": \"json\", \"value\": <JSON schema>} or "
        "{\"type\": \"regex\", \"value\": \"<regex>\"}.", json_schema_extra=GRAMMAR)
    # LoRAX
    adapter_id: str | None = Field(None, description="A LoRA adapter: a name (a folder of ADAPTERS_DIR, "
                                   "`base`, `combined`), a path under an allowed root (local) or a hub id "
                                   "(hub). Absent or empty: DEFAULT_ADAPTER.")
    adapter_source: str | None = Field(None, description="`local` (default here) or `hub` (the local "
                                       "Hugging Face cache unless ADAPTER_ALLOW_REMOTE); others get 400.")
    merged_adapters: MergedAdapters | None = Field(None, description="Excludes adapter_id.")
    api_token: str | None = Field(None, description="A hub token for private adapters (hub only).")
    ignore_eos_token: StrictBool | None = False
    return_k_alternatives: StrictInt | None = Field(None, ge=0, le=MAX_TOP_N_TOKENS)
    response_format: dict[str, Any] | None = Field(
        None, description="LoRAX's structured output, enforced: {\"type\": \"json_object\", "
        "\"schema\": <JSON schema>}; without `schema`, any JSON object.", json_schema_extra=RESPONSE_FORMAT)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: str = Field(..., min_length=1)
    parameters: Parameters | None = None


class CompatRequest(GenerateRequest):
    stream: StrictBool | None = False


# ---- responses ----

class InputToken(BaseModel):
    id: int
    text: str
    logprob: float | None


class Token(BaseModel):
    id: int
    text: str
    logprob: float | None
    special: bool


FinishReason = Literal["length", "eos_token", "stop_sequence"]


class BestOfSequence(BaseModel):
    generated_text: str
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    prefill: list[InputToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = None


class Details(BaseModel):
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    seed: int | None
    prefill: list[InputToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = None
    best_of_sequences: list[BestOfSequence] | None = None


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamDetails(BaseModel):
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    seed: int | None


class StreamResponse(BaseModel):
    """One `data:` event of /generate_stream; the last carries generated_text and details."""

    index: int
    token: Token
    top_tokens: list[Token] | None = None
    generated_text: str | None
    details: StreamDetails | None


class Info(BaseModel):
    model_id: str
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    version: str


class ErrorResponse(BaseModel):
    error: str
    error_type: str
