"""Access logging that never carries prompt or generated text: ids, endpoint, status, timings."""

from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, Response, g, request

from server.observability import metrics

log = logging.getLogger("inferbox.access")


def install(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        g.started = time.monotonic()

    @app.after_request
    def _done(resp: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.monotonic() - g.get("started", time.monotonic())
        metrics.REQUESTS.labels(endpoint, str(resp.status_code)).inc()
        metrics.LATENCY.labels(endpoint).observe(elapsed)
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        log.info("request_id=%s method=%s endpoint=%s status=%d duration_ms=%.1f",
                 g.get("request_id", "-"), request.method, endpoint, resp.status_code, elapsed * 1000)
        return resp
