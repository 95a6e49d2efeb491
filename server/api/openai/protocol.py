"""OpenAI wire types (requests validated by pydantic; responses documented for /openapi.json).

Unknown request fields are ignored, as vLLM and TGI do, so that clients sending newer fields keep
working; fields we cannot honour (non-text content, penalties, logit_bias...) are rejected with a 400
by the translation in openai.py, never silently dropped. Output constraints (`response_format`,
vLLM's `structured_outputs` / `guided_*`, `tools`) are enforced (server/api/openai/tools.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

MAX_N = 16
MAX_STOP = 16

StopString = Annotated[str, Field(min_length=1)]
Text = Annotated[str, Field(min_length=1)]
Texts = Annotated[list[Text], Field(min_length=1)]
TokenIds = Annotated[list[StrictInt], Field(min_length=1)]
Stop = StopString | list[StopString] | None
# What /openapi.json advertises for fields whose only supported value is "off" (the handler rejects
# the rest with a clearer message than a schema error).
ZERO = {"minimum": 0, "maximum": 0}
RESPONSE_FORMAT: dict[str, Any] = {"required": ["type"], "properties": {
    "type": {"enum": ["text", "json_object", "json_schema"]},
    "json_schema": {"type": "object", "required": ["schema"], "properties": {
        "name": {"type": "string"}, "schema": {"type": "object"}, "strict": {"type": ["boolean", "null"]}}}}}
FUNCTION_TOOL: dict[str, Any] = {"type": "object", "required": ["type", "function"], "properties": {
    "type": {"const": "function"},
    "function": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "description": {"type": "string"},
        "parameters": {"type": "object"}, "strict": {"type": ["boolean", "null"]}}}}}
TOOL_CHOICE: dict[str, Any] = {"anyOf": [
    {"enum": ["none", "auto", "required"]},
    {"type": "object", "required": ["type", "function"], "properties": {
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
    {"type": "null"}]}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: StrictBool | None = None


class _Sampling(BaseModel):
    """Fields shared by chat and legacy completions."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(None, description="The served model (or `base`), or a LoRA adapter's name; "
                              "with no adapter any name is accepted.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="0 = greedy.")
    n: StrictInt | None = Field(None, ge=1, le=MAX_N)
    stop: Stop = Field(None, description="Up to 16 strings; cut from the returned text.",
                       json_schema_extra={"maxItems": MAX_STOP})
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**63 - 1,
                                   description="Choice i samples with seed + i.")
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="Only 0 is supported.",
                                           json_schema_extra=ZERO)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="Only 0 is supported.",
                                            json_schema_extra=ZERO)
    logit_bias: dict[str, float] | None = Field(None, description="Only an empty map is supported.",
                                                json_schema_extra={"maxProperties": 0})
    user: str | None = None
    # extensions understood by vLLM and TGI's OpenAI routes
    top_k: StrictInt | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: StrictInt | None = Field(None, ge=0)
    # structured outputs (server/api/common/structured.py): one constraint per request, enforced or a 400
    response_format: dict[str, Any] | None = Field(
        None, description="{\"type\": \"text\" | \"json_object\"} or {\"type\": \"json_schema\", "
        "\"json_schema\": {\"name\", \"schema\", \"strict\"}}; enforced.", json_schema_extra=RESPONSE_FORMAT)
    structured_outputs: dict[str, Any] | None = Field(
        None, description="vLLM's: one of json (a schema), regex, choice, grammar (Lark or GBNF); enforced.",
        json_schema_extra={"maxProperties": 1, "properties": {
            "json": {"type": ["object", "string"]}, "regex": {"type": "string"},
            "choice": {"type": "array", "items": {"type": "string"}}, "grammar": {"type": "string"}}})
    guided_json: dict[str, Any] | str | None = Field(None, description="vLLM's older structured_outputs.")
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    name: str
    arguments: str = Field(description="JSON text, as the answer gave it.")


class ToolCallIn(BaseModel):
    """An earlier answer's call, sent back in the history."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, description="An assistant message's calls.")
    tool_call_id: str | None = Field(None, description="Which call a `tool` message answers.")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(
        None, description="Function tools; a call's arguments follow the tool's `parameters` schema.",
        json_schema_extra={"items": FUNCTION_TOOL})
    tool_choice: str | dict[str, Any] | None = Field(
        None, description="none, auto (the default with tools: text or calls), required, or a named "
        "function; required and named are enforced by a grammar.", json_schema_extra=TOOL_CHOICE)
    parallel_tool_calls: StrictBool | None = Field(None, description="Default true: calls may follow calls.")


class CompletionRequest(_Sampling):
    prompt: Text | Texts | TokenIds | Annotated[list[TokenIds], Field(min_length=1)] = Field(
        ..., description="Text, a list of texts, token ids, or a list of token-id lists.")
    max_tokens: StrictInt | None = Field(None, ge=1, description="Default 16, as OpenAI.")
    echo: StrictBool | None = False
    logprobs: StrictInt | None = Field(None, ge=0, le=5)
    best_of: StrictInt | None = Field(None, ge=1, le=MAX_N)
    suffix: str | None = Field(None, description="Not supported: must be absent or empty.",
                               json_schema_extra={"maxLength": 0})


# ---- responses (documentation for /openapi.json; the handlers build plain dicts) ----

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChoiceLogprobs | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class LegacyLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: LegacyLogprobs | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    parent: str | None = None  # an adapter's base model (null for the base model itself)


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody
