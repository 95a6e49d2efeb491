"""Kaito's transformers-runtime API: `/chat`, `/`, `/health`, `/metrics` (translation only).

`/chat` takes `prompt` (text generation on the raw prompt) or `messages` (the chat template; the
answer is the assistant's reply only) and any `GenerationConfig` field in `generate_kwargs`, with
Kaito's defaults where the client gives none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from server.api import engine_calls
from server.api.errors import ApiError, pydantic_message, read_json_object, register_renderer
from server.api.streaming import SSE_HEADERS, sse
from server.engine.service import Engine
from server.observability import metrics

bp = Blueprint("kaito", __name__)

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


def _engine() -> Engine:
    return current_app.extensions["inferbox.engine"]


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    resp = jsonify({"detail": exc.message})
    resp.status_code = exc.status
    resp.headers.update(exc.headers)
    return resp


register_renderer(bp.name, _api_error)


@bp.get("/")
def index() -> Response:
    return jsonify({"message": "Server is running"})


@bp.get("/health")
def health() -> Response:
    engine = _engine()
    if engine.healthy and not engine.draining:
        return jsonify({"status": "Healthy"})
    if engine.load_error:
        detail = "Model failed to load"
    elif engine.draining:
        detail = "Server is shutting down"
    elif engine.loaded is not None:
        detail = "Engine is not running"
    else:
        detail = "Model not initialized"
    resp = jsonify({"detail": detail})
    resp.status_code = 503
    return resp


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    if metrics.wants_prometheus(request.headers.get("Accept", "")):
        body, content_type = metrics.prometheus_exposition(request.headers.get("Accept", ""))
        return Response(body, content_type=content_type)
    return jsonify(metrics.kaito_system_metrics())


@bp.post("/chat")
def chat() -> Response:
    engine = _engine()
    try:
        body = ChatRequest.model_validate(read_json_object(request))
    except ValidationError as exc:
        raise ApiError(422, pydantic_message(exc)) from None
    if body.prompt is None and body.messages is None:
        raise ApiError(400, "request needs either `prompt` (text generation) or `messages` (chat)")
    if body.prompt is not None and body.messages is not None:
        raise ApiError(400, "send either `prompt` or `messages`, not both")
    engine_calls.require_ready(engine)

    chat_mode = body.messages is not None
    try:
        if chat_mode:
            input_ids = engine.encode_chat([m.model_dump() for m in body.messages or []])
        else:
            input_ids = engine.encode((body.prefix or "") + (body.prompt or ""))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    except Exception as exc:  # template errors (jinja) are the client's messages' fault
        if type(exc).__name__ in ("TemplateError", "TemplateSyntaxError", "UndefinedError"):
            raise ApiError(400, f"chat template failed on these messages: {exc}") from None
        raise
    if not input_ids:
        raise ApiError(400, "the prompt is empty after tokenization")

    kwargs = body.generate_kwargs
    if body.handle_long_generation == "hole" and isinstance(kwargs.get("max_new_tokens"), int):
        limits = engine.limits
        keep = (limits.context_length if limits else len(input_ids)) - kwargs["max_new_tokens"]
        if keep > 0:
            input_ids = input_ids[-keep:]
    params = engine_calls.make_params(engine, kwargs, len(input_ids), KAITO_DEFAULTS)
    req = engine_calls.new_request(engine, input_ids, params)
    prefix_text = "" if chat_mode or not body.return_full_text else (body.prompt or "")
    cleanup = body.clean_up_tokenization_spaces

    if body.stream:
        return _stream(engine, req, prefix_text, cleanup)

    results = engine_calls.run(engine, req)
    texts = [prefix_text + engine.decode(r.token_ids, True, cleanup) for r in results]
    metrics.record_tokens(len(input_ids), sum(len(r.token_ids) for r in results))
    return jsonify({"Result": "".join(texts)})


def _stream(engine: Engine, req: Any, prefix_text: str, cleanup: bool) -> Response:
    """SSE: `data: {"index", "text"}` per chunk, then one event per sequence with
    `finish_reason`, `prompt_tokens` and `completion_tokens`; the stream ends with `data: [DONE]`."""
    deltas = engine_calls.stream_text(engine, req, True, cleanup, strip_stop=False)
    first = next(deltas, None)  # surface overload / not-ready errors as a status code, not an event

    def body() -> Iterator[str]:
        counts: dict[int, int] = {}
        started: set[int] = set()
        try:
            if first is not None:
                yield from _render(first, counts, started, prefix_text, req.prompt_tokens)
            for d in deltas:
                yield from _render(d, counts, started, prefix_text, req.prompt_tokens)
        except ApiError as exc:
            yield sse({"error": exc.message})
        finally:
            deltas.close()
        metrics.record_tokens(req.prompt_tokens, sum(counts.values()))
        yield sse("[DONE]")

    return Response(stream_with_context(body()), mimetype="text/event-stream", headers=SSE_HEADERS)


def _render(d: engine_calls.TextDelta, counts: dict[int, int], started: set[int],
            prefix_text: str, prompt_tokens: int) -> Iterator[str]:
    counts[d.index] = counts.get(d.index, 0) + len(d.token_ids)
    text = d.text
    if d.index not in started and (text or d.finish_reason):
        started.add(d.index)
        text = prefix_text + text
    if text:
        yield sse({"index": d.index, "text": text})
    if d.finish_reason:
        yield sse({"index": d.index, "text": "", "finish_reason": d.finish_reason,
                   "prompt_tokens": prompt_tokens, "completion_tokens": counts[d.index]})
