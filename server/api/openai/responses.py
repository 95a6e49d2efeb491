"""OpenAI Responses API: `POST /v1/responses` (translation only), streamed or not.

`input` (a string or a list of messages, function calls and their outputs) and `instructions` become
chat messages for the model's chat template, exactly as `/v1/chat/completions` would send them, with
OpenAI's sampling defaults, so the same request at temperature 0 gives the same text through either
route. `text.format` (json_schema, json_object) and function `tools` with `tool_choice` are enforced
(responses_items.py); calls come back as `function_call` items. Nothing is stored:
`previous_response_id` and `conversation` are refused (send the whole conversation in `input`), as
are background runs, non-text input parts and hosted tools, with a 400 naming the field.

Streaming sends the SDK's event sequence: `response.created`, `response.in_progress`, then per
output item `response.output_item.added`, its content (`response.content_part.added`,
`response.output_text.delta`..., `response.output_text.done`, `response.content_part.done`; or
`response.function_call_arguments.delta`..., `response.function_call_arguments.done`) and
`response.output_item.done`; then `response.completed` (or `response.incomplete` when
`max_output_tokens` cut the reply, or `response.failed` if generation fails mid-stream), each as
`event: <type>` + `data: <json>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, jsonify
from pydantic import ValidationError

from server.api.common import adapters, engine_calls, structured
from server.api.common.dialect import Dialect, current_engine, tokenizing
from server.api.common.errors import ApiError
from server.api.common.streaming import sse, sse_response
from server.api.openai import responses_items as items
from server.api.openai import routes as openai
from server.api.openai.responses_protocol import REQUEST_MODELS, ResponsesRequest, describe
from server.api.openai.tool_calls import Tool, ToolCallStream, chat_messages, template_text
from server.engine.engine import Engine
from server.engine.grammar import Constraint
from server.engine.request import GenerationRequest
from server.observability import metrics


def _invalid(exc: ValidationError) -> ApiError:
    """The most specific failing field, named in `param` as the SDK's types name it."""
    message, param = describe(exc, REQUEST_MODELS)
    return ApiError(400, message, param=param)


# OpenAI's error shape and sampling defaults; engine option names as Responses clients know them
dialect = Dialect("responses", openai.dialect.error_body, invalid=_invalid, defaults=openai.OPENAI_DEFAULTS,
                  url_prefix="/v1", names={"max_new_tokens": "max_output_tokens",
                                             "generate_kwargs": "parameters"})
bp = dialect.bp


def _reject_unsupported(body: ResponsesRequest) -> None:
    """Features with no honest equivalent here: a 400 that names the field."""
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
    if body.reasoning and (body.reasoning.effort is not None or body.reasoning.summary is not None):
        raise ApiError(400, "reasoning options are not supported by this model", param="reasoning")
    if body.top_logprobs:
        raise ApiError(400, "top_logprobs is not supported by /v1/responses", param="top_logprobs")
    if any("logprobs" in item for item in body.include or ()):
        raise ApiError(400, "include: logprobs are not supported by /v1/responses", param="include")


def _input_ids(engine: Engine, messages: list[dict[str, Any]], tools: list[Tool]) -> list[int]:
    messages, tools_kw = chat_messages(messages, tools, template_text(engine.tokenizer))
    with tokenizing(param="input"):
        return engine.encode_chat(messages, tools_kw)


def _request(engine: Engine, body: ResponsesRequest, ids: list[int],
             constraint: Constraint | None) -> GenerationRequest:
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
    return engine_calls.new_request(engine, ids, dialect.params(engine, kw, len(ids)), adapter, constraint)


@bp.post("/responses")
def create_response() -> Response:
    engine = current_engine()
    body = dialect.read(ResponsesRequest)
    _reject_unsupported(body)
    spec, param, tools = items.constraint_spec(body)
    messages = items.input_messages(body)
    engine_calls.require_ready(engine)
    constraint = structured.compile_constraint(engine, spec, param)
    req = _request(engine, body, _input_ids(engine, messages, tools), constraint)
    reply = items.Reply(body, openai.answered_by(req))
    if body.stream:
        return _stream(engine, req, reply, bool(tools))

    seq = engine_calls.run(engine, req)[0]
    text, reason = engine_calls.final_text(seq)
    status = items.status_of(reason)
    metrics.record_tokens(req.prompt_tokens, len(seq.token_ids))
    return jsonify(reply.snapshot(status, reply.output(text, status, bool(tools)),
                                  items.usage(req.prompt_tokens, len(seq.token_ids))))


def _stream(engine: Engine, req: GenerationRequest, reply: items.Reply, with_tools: bool) -> Response:
    deltas = engine_calls.stream_text(engine, req)  # overload errors raise here, as a status code
    seq_no = iter(range(1 << 62))

    def event(kind: str, **fields: Any) -> str:
        return sse({"type": kind, "sequence_number": next(seq_no), **fields}, event=kind)

    def body() -> Iterator[str]:
        out = items.ItemStream(reply, event)
        parser = ToolCallStream() if with_tools else None
        tokens, reason = 0, None
        yield event("response.created", response=reply.snapshot("in_progress", []))
        yield event("response.in_progress", response=reply.snapshot("in_progress", []))
        if parser is None:
            yield from out.text("")  # without tools the message item opens at once, before any text
        try:
            for d in deltas:
                tokens += len(d.token_ids)
                if d.text:
                    yield from out.tool_events(parser.feed(d.text)) if parser else out.text(d.text)
                if d.finish_reason:
                    reason = d.finish_reason
            if parser is not None:
                yield from out.tool_events(parser.finish())
        except ApiError as exc:
            error = {"code": "server_error", "message": exc.message}
            yield event("response.failed", response=reply.snapshot("failed", out.partial(), error=error))
            return
        finally:
            deltas.close()
            metrics.record_tokens(req.prompt_tokens, tokens)
        status = items.status_of(reason)
        yield from out.finish(status)
        final = reply.snapshot(status, out.items, items.usage(req.prompt_tokens, tokens))
        yield event(f"response.{status}", response=final)

    return sse_response(body())
