"""Kaito wire types: the `/chat` request (validated by pydantic; documented in /openapi.json) and
Kaito's generation defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

# Kaito's GenerateKwargs defaults; they override the model's generation_config.json.
KAITO_DEFAULTS: dict[str, Any] = {
    "max_length": 200,
    "min_length": 0,
    "do_sample": True,
    "early_stopping": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 10,
    "top_p": 1.0,
    "typical_p": 1.0,
    "repetition_penalty": 1.0,
}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(BaseModel):
    """Kaito's UnifiedRequestModel, plus `stream`. Unknown top-level fields are ignored, as there."""

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1)
    return_full_text: StrictBool = True
    clean_up_tokenization_spaces: StrictBool = False
    prefix: str | None = None
    handle_long_generation: Literal["hole"] | None = None
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    stream: StrictBool = False
    adapter: str | None = Field(None, description="inferbox extension: the LoRA adapter to use (a name, "
                                "`base` or `combined`); absent = DEFAULT_ADAPTER.")
    response_format: dict[str, Any] | None = Field(
        None, description="inferbox extension: structured output, shaped as OpenAI's `response_format` "
        "({\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": {\"name\", "
        "\"schema\"}}); enforced, or refused with a 400.")
