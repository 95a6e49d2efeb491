"""Client-facing errors. Each dialect renders an `ApiError` in its own JSON shape."""

from __future__ import annotations

import json
from typing import Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.headers = headers or {}


def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or an ApiError (400/413/415) saying what is wrong."""
    too_large = ApiError(413, f"request body is larger than {request.max_content_length} bytes",
                         kind="request_too_large")
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise too_large from None
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        # A chunked body is cut at the limit without an error (werkzeug's LimitedStream): look for more.
        try:
            more = request.stream.read(1)
        except RequestEntityTooLarge:
            raise too_large from None
        if more:
            raise too_large
    if not raw:
        raise ApiError(400, "request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, not {type(body).__name__}")
    try:  # JSON admits lone surrogates (\ud800) that no tokenizer, encoder or client can take
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"request body holds a string that is not valid Unicode: {exc.reason}") from None
    return body


def pydantic_message(exc: Any) -> str:
    """One readable line from a pydantic ValidationError."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


# Each dialect registers how it renders an ApiError, keyed by its blueprint's name, so that checks
# made outside a dialect (keys, rate limits, overload) still answer in that dialect's shape.
ErrorRenderer = Any  # Callable[[ApiError], flask.Response]
ERROR_RENDERERS: dict[str, ErrorRenderer] = {}


def register_renderer(blueprint_name: str, renderer: ErrorRenderer) -> None:
    ERROR_RENDERERS[blueprint_name] = renderer


def render(blueprint_name: str | None, exc: ApiError) -> Any:
    renderer = ERROR_RENDERERS.get(blueprint_name or "", ERROR_RENDERERS.get("kaito"))
    return renderer(exc)
