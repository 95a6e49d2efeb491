"""How API modules hand inputs to a handler-served model kind, and what its failures become."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from server.api.common.errors import ApiError
from server.engine.errors import EngineUnavailable, QueueFull
from server.kinds.base import HandlerFailure, ModelRequest
from server.kinds.service import HandlerEngine, HandlerTimeout
from server.observability import access_log, metrics

KIND_NAMES = {"chat": "a chat (text generation) model", "embedding": "an embedding model",
              "handler": "a custom model handler"}


def require_kind(engine: Any, kind: str, what: str) -> HandlerEngine:
    """400 when the served model is of another kind (e.g. /v1/embeddings on a chat model)."""
    served = engine.kind
    if served != kind:
        raise ApiError(400, f"{what} needs {KIND_NAMES[kind]}; this server serves {KIND_NAMES[served]}",
                       kind="unsupported_model")
    return engine


def to_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HandlerFailure):
        return ApiError(exc.status, exc.message, kind="invalid_request_error" if exc.client_error
                        else "server_error")
    if isinstance(exc, QueueFull):
        return ApiError(503, f"server is overloaded: {exc}; retry later", kind="overloaded",
                        headers={"Retry-After": "1"})
    if isinstance(exc, HandlerTimeout):
        return ApiError(503, f"{exc}; the server is overloaded, retry later", kind="overloaded",
                        headers={"Retry-After": "5"})
    if isinstance(exc, EngineUnavailable):
        return ApiError(503, str(exc), kind="unavailable", headers={"Retry-After": "5"})
    raise exc


def costs(engine: HandlerEngine, requests: list[ModelRequest], field: str) -> list[int]:
    """Validate every input before any is queued; a bad one is a 400 naming its index."""
    out = []
    for k, r in enumerate(requests):
        try:
            out.append(engine.cost(r))
        except HandlerFailure as exc:
            if not exc.client_error:
                raise to_api_error(exc) from None
            detail = exc.message.split(": ", 1)[-1] if "rejected the input" in exc.message else exc.message
            raise ApiError(400, f"{field}.{k}: {detail}", param=field) from None
        except EngineUnavailable as exc:
            raise to_api_error(exc) from None
    return out


def run(engine: HandlerEngine, requests: list[ModelRequest], field: str = "inputs") -> tuple[list[Any], int]:
    """Validate, queue, wait: (outputs in input order, tokens counted)."""
    if engine.loaded is None:
        raise ApiError(503, "the model is not loaded yet", kind="unavailable", headers={"Retry-After": "5"})
    counted = costs(engine, requests, field)
    tokens = sum(counted) if getattr(engine.handler, "cost", None) else 0
    try:
        outputs = engine.run(requests, counted)
    except Exception as exc:
        raise to_api_error(exc) from None
    usage = access_log.usage()
    if usage is not None:
        usage.prompt_tokens += tokens
    metrics.record_tokens(tokens, 0)
    return outputs, tokens


def stream(engine: HandlerEngine, request: ModelRequest) -> Iterator[str]:
    if engine.loaded is None:
        raise ApiError(503, "the model is not loaded yet", kind="unavailable", headers={"Retry-After": "5"})
    try:
        if not engine.can_stream():
            raise ApiError(400, f"{type(engine.handler).__qualname__} has no predict_stream; use /predict",
                           kind="unsupported")
        return engine.stream(dict(request))
    except Exception as exc:
        raise to_api_error(exc) from None


def info(engine: Any) -> dict[str, Any]:
    """`/info` for a handler-served kind, in text-embeddings-inference's shape."""
    settings = engine.settings
    described = engine.describe() if engine.loaded is not None else {"kind": engine.kind}
    kind = described.get("kind", engine.kind)
    model_type = ({"embedding": {"pooling": described.get("pooling", "unknown")}} if kind == "embedding"
                  else {"handler": {"class": described.get("handler")}})
    return {
        "model_id": settings.served_model_name,
        "model_sha": None,
        "model_dtype": described.get("dtype"),
        "model_type": model_type,
        "model_pipeline_tag": "feature-extraction" if kind == "embedding" else None,
        "embedding_dimension": described.get("dimension"),
        "max_concurrent_requests": settings.max_queued_requests,
        "max_input_length": described.get("max_input_tokens"),
        "max_batch_tokens": settings.max_batch_tokens,
        "max_batch_requests": settings.max_batch_size,
        "max_client_batch_size": settings.max_client_batch_size,
        "router": "inferbox",
    }
