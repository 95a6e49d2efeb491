"""vLLM's tokenizer routes' wire types (`POST /tokenize`, `POST /detokenize`), validated by pydantic.

Unknown fields are ignored, as vLLM does. `prompt` and `messages` are both optional here so the
handler can say which one is missing or extra; /openapi.json advertises exactly one of them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from server.api.openai.protocol import ChatMessage


class TokenizeRequest(BaseModel):
    """vLLM's TokenizeCompletionRequest and TokenizeChatRequest in one body: `prompt` or `messages`."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(None, description="Any name is accepted.")
    prompt: str | None = Field(None, description="Text to tokenize (exactly one of prompt and messages).")
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = Field(
        None, description="Chat messages; the model's chat template is applied.")
    add_special_tokens: StrictBool | None = Field(
        None, description="Default true for prompt, false for messages (the template adds them).")
    add_generation_prompt: StrictBool = Field(True, description="messages only: end with the assistant cue.")
    continue_final_message: StrictBool = Field(
        False, description="messages only: leave the last message open (not with add_generation_prompt).")
    return_token_strs: StrictBool = Field(False, description="Also return each token's string.")


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(None, description="Any name is accepted.")
    tokens: list[Annotated[StrictInt, Field(ge=0)]] = Field(..., description="Token ids to decode.")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeResponse(BaseModel):
    prompt: str
