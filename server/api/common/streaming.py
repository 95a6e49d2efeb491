"""Wire writers for streamed responses: Server-Sent Events and newline-delimited JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Response, stream_with_context

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


def sse(data: Any, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


def ndjson(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


def sse_response(events: Iterator[str]) -> Response:
    """A streamed `text/event-stream` response of already rendered events."""
    return Response(stream_with_context(events), mimetype="text/event-stream", headers=SSE_HEADERS)


def ndjson_response(lines: Iterator[str]) -> Response:
    """A streamed `application/x-ndjson` response of already rendered lines."""
    return Response(stream_with_context(lines), mimetype="application/x-ndjson", headers=SSE_HEADERS)
