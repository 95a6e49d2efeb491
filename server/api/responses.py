"""OpenAI Responses API: `POST /v1/responses` (translation only), streamed or not.

`input` (a string or a list of messages) and `instructions` become chat messages for the model's
chat template, exactly as `/v1/chat/completions` would send them, with OpenAI's sampling defaults,
so the same request at temperature 0 gives the same text through either route. Nothing is stored:
`previous_response_id` and `conversation` are refused (send the whole conversation in `input`), as
are tools, background runs, non-text input parts and structured output, with a 400 naming the field.

Streaming sends the SDK's event sequence: `response.created`, `response.in_progress`,
`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`, `response.output_item.done`, then
`response.completed` (or `response.incomplete` when `max_output_tokens` cut the reply, or
`response.failed` if generation fails mid-stream), each as `event: <type>` + `data: <json>`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, jsonify
from pydantic import ValidationError

from server.api import adapters, engine_calls, openai
from server.api.dialect import Dialect, current_engine, tokenizing
from server.api.errors import ApiError
from server.api.responses_protocol import (
    REQUEST_MODELS,
    InputMessage,
    ResponsesRequest,
    UnsupportedPart,
    describe,
)
from server.api.streaming import sse, sse_response
from server.engine.engine import Engine
from server.engine.request import GenerationRequest
from server.observability import metrics


def _invalid(exc: ValidationError) -> ApiError:
    """The most specific failing field, named in `param` as the SDK's types name it."""
    message, param = describe(exc, REQUEST_MODELS)
    return ApiError(400, message, param=param)


# OpenAI's error shape and sampling defaults; engine option names as Responses clients know them
dialect = Dialect("responses", openai.dialect.error_body, invalid=_invalid, defaults=openai.OPENAI_DEFAULTS,
                  url_prefix="/v1", renames={"max_new_tokens": "max_output_tokens",
                                             "generate_kwargs": "parameters"})
bp = dialect.bp


def _reject_unsupported(body: ResponsesRequest) -> None:
    """Features with no honest equivalent here: a 400 that names the field."""
    if body.tools:
        raise ApiError(400, "tools are not supported by this server", param="tools")
    if body.tool_choice not in (None, "none", "auto"):
        raise ApiError(400, "tool_choice is not supported by this server", param="tool_choice")
    if body.previous_response_id is not None:
        raise ApiError(400, f"previous_response_id: no response '{body.previous_response_id}' is stored "
                       "(this server stores none); send the whole conversation in `input`",
                       param="previous_response_id", kind="previous_response_not_found")
    if body.conversation is not None:
        raise ApiError(400, "conversation is not supported: this server stores no conversations; send "
                       "the whole conversation in `input`", param="conversation")
    if body.prompt is not None:
        raise ApiError(400, "prompt templates are not supported by this server", param="prompt")
    if body.background:
        raise ApiError(400, "background responses are not supported by this server", param="background")
    if body.text and body.text.format and body.text.format.type != "text":
        raise ApiError(400, "text.format other than text is not supported", param="text.format")
    if body.reasoning and (body.reasoning.effort is not None or body.reasoning.summary is not None):
        raise ApiError(400, "reasoning options are not supported by this model", param="reasoning")
    if body.top_logprobs:
        raise ApiError(400, "top_logprobs is not supported by /v1/responses", param="top_logprobs")
    if any("logprobs" in item for item in body.include or ()):
        raise ApiError(400, "include: logprobs are not supported by /v1/responses", param="include")


def _messages(body: ResponsesRequest) -> list[dict[str, str]]:
    """`instructions` + `input` as chat-template messages; non-text parts and items are refused."""
    out: list[dict[str, str]] = []
    if body.instructions:
        out.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*out, {"role": "user", "content": body.input}]
    for i, item in enumerate(body.input):
        if not isinstance(item, InputMessage):
            raise ApiError(400, f"input[{i}]: items of type '{item.type}' are not supported by this server "
                           "(only messages)", param=f"input[{i}]")
        if isinstance(item.content, str):
            text = item.content
        else:
            pieces = []
            for j, part in enumerate(item.content):
                if isinstance(part, UnsupportedPart):
                    raise ApiError(400, f"input[{i}].content[{j}]: {part.type} parts are not supported by "
                                   "this server (only input_text)", param=f"input[{i}].content[{j}]")
                pieces.append(part.text)
            text = "".join(pieces)
        out.append({"role": "system" if item.role == "developer" else item.role, "content": text})
    return out


def _input_ids(engine: Engine, messages: list[dict[str, str]]) -> list[int]:
    with tokenizing(param="input"):
        return engine.encode_chat(messages)


def _request(engine: Engine, body: ResponsesRequest, ids: list[int]) -> GenerationRequest:
    """The same engine request `/v1/chat/completions` builds for these fields."""
    if not ids:
        raise ApiError(400, "the input is empty after tokenization", param="input")
    kw = openai.sampling_kwargs(body.temperature, body.top_p)
    limits = engine.limits
    if body.max_output_tokens is not None:
        kw["max_new_tokens"] = body.max_output_tokens
    elif limits is not None:
        kw["max_new_tokens"] = max(1, limits.context_length - len(ids))
    served = current_app.extensions["inferbox.settings"].served_model_name
    adapter = adapters.for_model(engine, body.model, served)
    return engine_calls.new_request(engine, ids, dialect.params(engine, kw, len(ids)), adapter)


class _Reply:
    """The response object as it evolves: created -> in progress -> completed / incomplete / failed."""

    def __init__(self, body: ResponsesRequest, model: str) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.body = body
        self.model = model

    def message(self, text: str, status: str) -> dict[str, Any]:
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant",
                "content": [_text_part(text)]}

    def snapshot(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 error: dict[str, str] | None = None) -> dict[str, Any]:
        b = self.body
        done = status in ("completed", "incomplete")
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "completed_at": int(time.time()) if done else None, "status": status, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "model": self.model,
            "output": output, "parallel_tool_calls": b.parallel_tool_calls is not False,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
            "temperature": 1.0 if b.temperature is None else b.temperature,
            "text": {"format": {"type": "text"}}, "tool_choice": b.tool_choice or "auto", "tools": [],
            "top_p": 1.0 if b.top_p is None else b.top_p, "truncation": b.truncation or "disabled",
            "usage": usage, "user": b.user, "metadata": b.metadata or {},
        }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


def _status(finish_reason: str | None) -> str:
    """A reply cut by the token limit (or the server's deadline) is incomplete, as OpenAI's."""
    return "incomplete" if finish_reason in ("length", "timeout", None) else "completed"


@bp.post("/responses")
def create_response() -> Response:
    engine = current_engine()
    body = dialect.read(ResponsesRequest)
    _reject_unsupported(body)
    messages = _messages(body)
    engine_calls.require_ready(engine)
    req = _request(engine, body, _input_ids(engine, messages))
    reply = _Reply(body, openai.answered_by(req))
    if body.stream:
        return _stream(engine, req, reply)

    seq = engine_calls.run(engine, req)[0]
    text, reason = engine_calls.final_text(engine, seq, req.params.stop)
    status = _status(reason)
    metrics.record_tokens(req.prompt_tokens, len(seq.token_ids))
    return jsonify(reply.snapshot(status, [reply.message(text, status)],
                                  _usage(req.prompt_tokens, len(seq.token_ids))))


def _stream(engine: Engine, req: GenerationRequest, reply: _Reply) -> Response:
    deltas = engine_calls.stream_text(engine, req)  # overload errors raise here, as a status code
    seq_no = iter(range(1 << 62))

    def event(kind: str, **fields: Any) -> str:
        return sse({"type": kind, "sequence_number": next(seq_no), **fields}, event=kind)

    def body() -> Iterator[str]:
        where = {"item_id": reply.item_id, "output_index": 0}
        text, tokens, reason = "", 0, None
        yield event("response.created", response=reply.snapshot("in_progress", []))
        yield event("response.in_progress", response=reply.snapshot("in_progress", []))
        yield event("response.output_item.added", output_index=0, item=reply.message("", "in_progress")
                    | {"content": []})
        yield event("response.content_part.added", **where, content_index=0, part=_text_part(""))
        try:
            for d in deltas:
                tokens += len(d.token_ids)
                if d.text:
                    text += d.text
                    yield event("response.output_text.delta", **where, content_index=0, delta=d.text,
                                logprobs=[])
                if d.finish_reason:
                    reason = d.finish_reason
        except ApiError as exc:
            failed = reply.snapshot("failed", [reply.message(text, "incomplete")],
                                    error={"code": "server_error", "message": exc.message})
            yield event("response.failed", response=failed)
            return
        finally:
            deltas.close()
            metrics.record_tokens(req.prompt_tokens, tokens)
        status = _status(reason)
        yield event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
        yield event("response.content_part.done", **where, content_index=0, part=_text_part(text))
        item = reply.message(text, status)
        yield event("response.output_item.done", output_index=0, item=item)
        final = reply.snapshot(status, [item], _usage(req.prompt_tokens, tokens))
        yield event(f"response.{status}", response=final)

    return sse_response(body())
