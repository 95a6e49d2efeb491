"""OpenAI Responses API wire types (`POST /v1/responses`), as the `openai` SDK sends and parses them.

Requests are validated by pydantic; unknown fields are ignored (as in openai_protocol.py). Fields
this server cannot honour (stored responses, background runs, non-text input, tools other than
functions) are let through by the models and refused with a 400 naming the field by responses.py, so
the message says why; /openapi.json leaves them out of the schema. `text.format`, `tools` and
`tool_choice` are read by responses_items.py, which names the bad part in its 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictInt, Tag, ValidationError

# What /openapi.json advertises for fields whose only supported value is "absent"
NULL_ONLY = {"type": "null"}
FUNCTION_TOOL: dict[str, Any] = {
    "type": "object", "required": ["type", "name"],
    "properties": {"type": {"const": "function"}, "name": {"type": "string"},
                   "description": {"type": "string"}, "parameters": {"type": "object"},
                   "strict": {"type": ["boolean", "null"]}}}
TOOL_CHOICE: dict[str, Any] = {"anyOf": [
    {"enum": ["none", "auto", "required"]},
    {"type": "object", "required": ["type", "name"], "properties": {"type": {"const": "function"},
                                                                 "name": {"type": "string"}}},
    {"type": "null"}]}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class InputTextPart(_Strict):
    """`input_text` (what clients send) or `output_text` (an earlier reply sent back as input)."""

    type: Literal["input_text", "output_text"]
    text: str


class UnsupportedPart(_Strict):
    """Images, files, audio and refusals: refused by the handler, which names the part."""

    type: Literal["input_image", "input_file", "input_audio", "refusal"]


ContentPart = Annotated[InputTextPart | UnsupportedPart, Field(discriminator="type")]


class InputMessage(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(_Strict):
    """A call the model made earlier, sent back in the history (as the SDK echoes output items)."""

    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1)]
    name: str
    arguments: str = Field(..., description="The arguments as JSON text.")
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    """The result of a call: rendered as a `tool` message for the call with this `call_id`."""

    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1)]
    output: str | list[ContentPart] = Field(..., description="Text, or input_text parts.")
    id: str | None = None
    status: str | None = None


class UnsupportedItem(BaseModel):
    """Any other input item (reasoning, item references, hosted tools' calls): refused by name."""

    model_config = ConfigDict(extra="allow")

    type: str


_KINDS = ("message", "function_call", "function_call_output")


def _item_kind(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if kind in _KINDS else "other"


InputItem = Annotated[Annotated[InputMessage, Tag("message")]
                      | Annotated[FunctionCallItem, Tag("function_call")]
                      | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
                      | Annotated[UnsupportedItem, Tag("other")], Discriminator(_item_kind)]


class TextFormat(_Strict):
    """`text`, `json_object`, or `json_schema` (flat: name, schema and strict beside `type`)."""

    type: str = Field("text", json_schema_extra={"enum": ["text", "json_object", "json_schema"]})
    name: str | None = None
    description: str | None = None
    schema_: Any = Field(None, alias="schema", description="The JSON schema (json_schema only).",
                         json_schema_extra={"type": ["object", "null"]})
    strict: StrictBool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(_Strict):
    effort: str | None = Field(None, description="Not supported: must be null.", json_schema_extra=NULL_ONLY)
    summary: str | None = Field(None, description="Not supported: must be null.", json_schema_extra=NULL_ONLY)


class ResponsesRequest(_Strict):
    model: str | None = Field(None, description="The served model (or `base`), or a LoRA adapter's name; "
                              "with no adapter any name is accepted.")
    input: Annotated[str, Field(min_length=1)] | Annotated[list[InputItem], Field(min_length=1)] = Field(
        ..., description="A user message, or a list of messages (system, developer, user, assistant), "
                        "function_call items and their function_call_output.")
    instructions: str | None = Field(None, description="A system message placed before `input`.")
    max_output_tokens: StrictInt | None = Field(None, ge=1, description="Default: the rest of the context.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="0 = greedy.")
    stream: StrictBool | None = False
    metadata: dict[str, str] | None = Field(None, max_length=16, description="Echoed back.")
    store: StrictBool | None = Field(None, description="Accepted; this server stores nothing.")
    user: str | None = None
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] | None = None
    parallel_tool_calls: StrictBool | None = None
    include: list[str] | None = Field(None, description="No logprobs; other values are ignored.")
    tools: list[dict[str, Any]] | None = Field(
        None, description="Function tools {type: function, name, description, parameters, strict}.",
        json_schema_extra={"items": FUNCTION_TOOL})
    tool_choice: str | dict[str, Any] | None = Field(
        None, description="none, auto (the default with tools), required, or {type: function, name}.",
        json_schema_extra=TOOL_CHOICE)
    previous_response_id: str | None = Field(
        None, description="Not supported (nothing is stored): send the conversation in `input`.",
        json_schema_extra=NULL_ONLY)
    conversation: str | dict[str, Any] | None = Field(None, description="Not supported.",
                                                      json_schema_extra=NULL_ONLY)
    prompt: dict[str, Any] | None = Field(None, description="Prompt templates are not supported.",
                                          json_schema_extra=NULL_ONLY)
    background: StrictBool | None = Field(None, description="Only false.",
                                          json_schema_extra={"enum": [False, None]})
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20, description="Only 0.",
                                           json_schema_extra={"maximum": 0})


def describe(exc: ValidationError, models: tuple[type[BaseModel], ...]) -> tuple[str, str | None]:
    """(message, param) for the most specific error: the deepest location, named by the field names of
    `models` and indexes only (`input[0].content[1].text`), without pydantic's union branch labels."""
    fields: set[str] = set().union(*(m.model_fields for m in models))
    err = max(exc.errors(), key=lambda e: len(e["loc"]))
    param = ""
    for p in err["loc"]:
        if isinstance(p, int):
            param += f"[{p}]"
        elif p in fields:
            param += f".{p}" if param else p
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{param or 'body'}: {err['msg']}{more}", param or None


REQUEST_MODELS = (ResponsesRequest, InputMessage, InputTextPart, UnsupportedPart, FunctionCallItem,
                  FunctionCallOutputItem, UnsupportedItem, TextFormat, TextConfig, Reasoning)


# ---- responses (documentation for /openapi.json; the handler builds plain dicts) ----

class OutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class OutputMessage(BaseModel):
    type: Literal["message"]
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"]
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class InputTokensDetails(BaseModel):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"]
    created_at: int
    completed_at: int | None
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[Annotated[OutputMessage | OutputFunctionCall, Field(discriminator="type")]]
    parallel_tool_calls: bool
    previous_response_id: None
    reasoning: dict[str, Any]
    store: bool
    temperature: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float
    truncation: str
    usage: ResponseUsage | None
    user: str | None
    metadata: dict[str, str]


class StreamEvent(BaseModel):
    """One `data:` payload of the stream; `type` is also the SSE `event:` name."""

    model_config = ConfigDict(extra="allow")

    type: Literal["response.created", "response.in_progress", "response.output_item.added",
                  "response.content_part.added", "response.output_text.delta", "response.output_text.done",
                  "response.content_part.done", "response.output_item.done",
                  "response.function_call_arguments.delta", "response.function_call_arguments.done",
                  "response.completed",
                  "response.incomplete", "response.failed"]
    sequence_number: int
