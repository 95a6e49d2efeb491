"""`POST /tokenize` and `POST /detokenize` in vLLM's shape, so clients can count tokens before sending.

`/tokenize` takes `prompt` (text; `add_special_tokens` defaults to true) or chat `messages` (the
model's chat template applied, with `add_generation_prompt` true by default and `add_special_tokens`
false, as the template already carries them) and answers `tokens`, `count`, `max_model_len` and,
with `return_token_strs`, each token's string. `/detokenize` takes `tokens` and answers `prompt`.
Errors use the OpenAI error shape (as vLLM's). Nothing here touches the model, only its tokenizer.
"""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from server.api import engine_calls
from server.api.errors import ApiError, read_json_object, register_renderer, render
from server.api.openai_protocol import ChatMessage, TextPart
from server.api.responses_protocol import describe
from server.engine.service import Engine

bp = Blueprint("tokenize", __name__)


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


def _api_error(exc: ApiError) -> Response:
    return render("openai", exc)  # vLLM answers these routes in the OpenAI error shape


bp.register_error_handler(ApiError, _api_error)
register_renderer(bp.name, _api_error)


def _engine() -> Engine:
    return current_app.extensions["inferbox.engine"]


def _read(model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(read_json_object(request))
    except ValidationError as exc:
        message, param = describe(exc, (model, ChatMessage, TextPart))
        raise ApiError(400, message, param=param) from None


def _chat_text(engine: Engine, body: TokenizeRequest) -> str:
    messages: list[dict[str, Any]] = []
    for m in body.messages or []:
        content = m.content if isinstance(m.content, str) or m.content is None else \
            "".join(p.text for p in m.content)
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
    tok = engine.tokenizer
    if not tok.chat_template:
        raise ApiError(400, "this model has no chat template; send `prompt`", param="messages")
    try:
        return tok.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=body.add_generation_prompt,
                                       continue_final_message=body.continue_final_message)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="messages") from None
    except Exception as exc:  # jinja template errors are the messages' fault
        if type(exc).__name__ in ("TemplateError", "TemplateSyntaxError", "UndefinedError"):
            raise ApiError(400, f"chat template failed on these messages: {exc}", param="messages") from None
        raise


@bp.post("/tokenize")
def tokenize() -> Response:
    engine = _engine()
    body: TokenizeRequest = _read(TokenizeRequest)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "send exactly one of `prompt` and `messages`", param="prompt")
    if body.add_generation_prompt and body.continue_final_message and body.messages is not None:
        raise ApiError(400, "add_generation_prompt and continue_final_message cannot both be true",
                       param="continue_final_message")
    engine_calls.require_ready(engine)
    if body.prompt is not None:
        text = body.prompt
        special = True if body.add_special_tokens is None else body.add_special_tokens
    else:
        text = _chat_text(engine, body)
        special = bool(body.add_special_tokens)
    ids = engine.encode(text, add_special_tokens=special)
    limits = engine.limits
    strs = engine.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return jsonify({"count": len(ids), "max_model_len": limits.context_length if limits else 0,
                    "tokens": ids, "token_strs": strs})


@bp.post("/detokenize")
def detokenize() -> Response:
    engine = _engine()
    body: DetokenizeRequest = _read(DetokenizeRequest)
    engine_calls.require_ready(engine)
    vocab = engine.limits.vocab_size if engine.limits else None
    if vocab is not None and any(t >= vocab for t in body.tokens):
        raise ApiError(400, f"tokens: token ids must be in [0, {vocab})", param="tokens")
    return jsonify({"prompt": engine.decode(body.tokens, skip_special_tokens=False)})
