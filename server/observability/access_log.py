"""Access logging that never carries prompt or generated text: ids, endpoint, status, token counts,
timings. A streamed response is logged (and its latency observed) when its last byte has gone,
with the token counts the stream produced."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from flask import Flask, Response, g, has_request_context, request

from server.observability import metrics

log = logging.getLogger("inferbox.access")


@dataclass
class Usage:
    """Filled by server.api.common.engine_calls while a request runs; read when its response is done."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None


def usage() -> Usage | None:
    """This request's usage record (None outside a request, e.g. in unit tests of engine_calls)."""
    if not has_request_context():
        return None
    if "usage" not in g:
        g.usage = Usage()
    return g.usage


def install(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        g.started = time.monotonic()
        g.usage = Usage()
        metrics.ADAPTER.set("-")  # this thread served other requests before

    @app.after_request
    def _done(resp: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        started = g.get("started", time.monotonic())
        request_id = g.get("request_id", "-")
        resp.headers["X-Request-Id"] = request_id
        metrics.REQUESTS.labels(endpoint, str(resp.status_code), metrics.ADAPTER.get()).inc()
        line = _Line(request_id, request.method, endpoint, resp.status_code, started,
                     g.get("usage") or Usage(), g.get("api_key_id", "-"))
        if resp.is_streamed:
            resp.call_on_close(line.emit)
        else:
            line.emit()
        return resp


@dataclass
class _Line:
    request_id: str
    method: str
    endpoint: str
    status: int
    started: float
    usage: Usage
    key_id: str

    def emit(self) -> None:
        elapsed = time.monotonic() - self.started
        metrics.LATENCY.labels(self.endpoint).observe(elapsed)
        u = self.usage
        ttft = f"{u.ttft_s * 1000:.1f}" if u.ttft_s is not None else "-"
        log.info("request_id=%s method=%s endpoint=%s status=%d prompt_tokens=%d completion_tokens=%d "
                 "ttft_ms=%s duration_ms=%.1f key=%s", self.request_id, self.method, self.endpoint,
                 self.status, u.prompt_tokens, u.completion_tokens, ttft, elapsed * 1000, self.key_id)
