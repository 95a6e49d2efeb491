"""`POST /tokenize` and `POST /detokenize` in vLLM's shape, so clients can count tokens before sending.

`/tokenize` takes `prompt` (text; `add_special_tokens` defaults to true) or chat `messages` (the
model's chat template applied, with `add_generation_prompt` true by default and `add_special_tokens`
false, as the template already carries them) and answers `tokens`, `count`, `max_model_len` and,
with `return_token_strs`, each token's string. `/detokenize` takes `tokens` and answers `prompt`.
Errors use the OpenAI error shape (as vLLM's). Nothing here touches the model, only its tokenizer.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from pydantic import ValidationError

from server.api.common import engine_calls
from server.api.common.dialect import Dialect, current_engine, tokenizing
from server.api.common.errors import ApiError
from server.api.openai import routes as openai
from server.api.openai.protocol import ChatMessage, TextPart
from server.api.openai.responses_protocol import describe
from server.api.openai.tokenize_protocol import DetokenizeRequest, TokenizeRequest
from server.engine.engine import Engine


def _invalid(exc: ValidationError) -> ApiError:
    message, param = describe(exc, (TokenizeRequest, DetokenizeRequest, ChatMessage, TextPart))
    return ApiError(400, message, param=param)


dialect = Dialect("tokenize", openai.dialect.error_body, invalid=_invalid)  # vLLM: OpenAI's error shape
bp = dialect.bp


def _chat_text(engine: Engine, body: TokenizeRequest) -> str:
    messages: list[dict[str, Any]] = []
    for m in body.messages or []:
        content = m.content if isinstance(m.content, str) or m.content is None else \
            "".join(p.text for p in m.content)
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
    tok = engine.tokenizer
    if not tok.chat_template:
        raise ApiError(400, "this model has no chat template; send `prompt`", param="messages")
    with tokenizing(param="messages"):
        return tok.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=body.add_generation_prompt,
                                       continue_final_message=body.continue_final_message)


@bp.post("/tokenize")
def tokenize() -> Response:
    engine = current_engine()
    body = dialect.read(TokenizeRequest)
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
    with tokenizing(param="prompt"):
        ids = engine.encode(text, add_special_tokens=special)
    limits = engine.limits
    strs = engine.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return jsonify({"count": len(ids), "max_model_len": limits.context_length if limits else 0,
                    "tokens": ids, "token_strs": strs})


@bp.post("/detokenize")
def detokenize() -> Response:
    engine = current_engine()
    body = dialect.read(DetokenizeRequest)
    engine_calls.require_ready(engine)
    vocab = engine.limits.vocab_size if engine.limits else None
    if vocab is not None and any(t >= vocab for t in body.tokens):
        raise ApiError(400, f"tokens: token ids must be in [0, {vocab})", param="tokens")
    return jsonify({"prompt": engine.decode(body.tokens, skip_special_tokens=False)})
