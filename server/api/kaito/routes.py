"""Kaito's transformers-runtime API: `/chat`, `/`, `/health`, `/metrics` (translation only).

`/chat` takes `prompt` (text generation on the raw prompt) or `messages` (the chat template; the
answer is the assistant's reply only) and any `GenerationConfig` field in `generate_kwargs`, with
Kaito's defaults where the client gives none. A top-level `adapter` (an inferbox extension)
names the LoRA adapter; without it the server's DEFAULT_ADAPTER answers, as under Kaito. A top-level
`response_format` (also an extension, shaped as OpenAI's: `json_object`, or `json_schema` with a
schema) constrains the output; one that cannot be enforced is a 400 `{"detail": ...}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, jsonify, request

from server import ui
from server.api.common import adapters, engine_calls, structured
from server.api.common.dialect import Dialect, current_engine, tokenizing
from server.api.common.errors import ApiError
from server.api.common.streaming import sse, sse_response
from server.api.kaito.protocol import KAITO_DEFAULTS, ChatRequest
from server.engine.engine import Engine
from server.engine.request import TextOptions
from server.observability import metrics


def _error(exc: ApiError) -> tuple[int, dict[str, Any]]:
    return exc.status, {"detail": exc.message}


# `generate_kwargs` is this dialect's own name for the engine's options: no other names
dialect = Dialect("kaito", _error, defaults=KAITO_DEFAULTS, names={})
bp = dialect.bp


@bp.get("/")
def index() -> Response:
    """Kaito's liveness answer; a browser (Accept prefers text/html) gets the chat page instead."""
    resp = ui.page() if ui.wants_page(request) else jsonify({"message": "Server is running"})
    resp.headers["Vary"] = "Accept"
    return resp


@bp.get("/health")
def health() -> Response:
    engine = current_engine()
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
    engine = current_engine()
    loaded = engine.loaded
    return jsonify(metrics.kaito_system_metrics({
        "name": engine.settings.served_model_name,
        "dtype": str(loaded.dtype).removeprefix("torch.") if loaded else None,
        "quantization": engine.settings.quantization,
        "weight_bytes": loaded.weight_bytes if loaded else None,
    }))


@bp.post("/chat")
def chat() -> Response:
    engine = current_engine()
    body = dialect.read(ChatRequest)
    if body.prompt is None and body.messages is None:
        raise ApiError(400, "request needs either `prompt` (text generation) or `messages` (chat)")
    if body.prompt is not None and body.messages is not None:
        raise ApiError(400, "send either `prompt` or `messages`, not both")
    spec = structured.openai_response_format(body.response_format)
    engine_calls.require_ready(engine)
    constraint = structured.compile_constraint(engine, spec, "response_format")

    chat_mode = body.messages is not None
    with tokenizing():
        if chat_mode:
            input_ids = engine.encode_chat([m.model_dump() for m in body.messages or []])
        else:
            input_ids = engine.encode((body.prefix or "") + (body.prompt or ""))
    if not input_ids:
        raise ApiError(400, "the prompt is empty after tokenization")

    kwargs = body.generate_kwargs
    if body.handle_long_generation == "hole" and isinstance(kwargs.get("max_new_tokens"), int):
        limits = engine.limits
        keep = (limits.context_length if limits else len(input_ids)) - kwargs["max_new_tokens"]
        if keep > 0:
            input_ids = input_ids[-keep:]
    params = dialect.params(engine, kwargs, len(input_ids))
    # Kaito's pipeline leaves a stop string at the end of the text, as transformers' stop_strings do
    text = TextOptions(clean_up_tokenization_spaces=body.clean_up_tokenization_spaces, strip_stop=False)
    req = engine_calls.new_request(engine, input_ids, params, adapters.named(body.adapter), constraint, text)
    prefix_text = "" if chat_mode or not body.return_full_text else (body.prompt or "")

    if body.stream:
        return _stream(engine, req, prefix_text)

    results = engine_calls.run(engine, req)
    texts = [prefix_text + r.text for r in results]
    metrics.record_tokens(len(input_ids), sum(len(r.token_ids) for r in results))
    return jsonify({"Result": "".join(texts)})


def _stream(engine: Engine, req: Any, prefix_text: str) -> Response:
    """SSE: `data: {"index", "text"}` per chunk, then one event per sequence with
    `finish_reason`, `prompt_tokens` and `completion_tokens`; the stream ends with `data: [DONE]`."""
    deltas = engine_calls.stream_text(engine, req)
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

    return sse_response(body())


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
