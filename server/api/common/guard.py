"""App-level admission: API keys (checked with server/api/common/api_keys.py), per-key rate limits
and the drain gate, for every dialect.

Installed once by `create_app`, it runs before any route, so dialects added later are covered
without doing anything. Its errors go through `errors.render(request.blueprint, ...)`, so each
dialect answers in its own error shape. Paths in `OPEN_PATHS` (GET/HEAD only) skip all three.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RequestLimit
from flask_limiter.errors import RateLimitExceeded

from server.api.common.api_keys import key_id, match_key, presented_keys
from server.api.common.errors import ApiError, render
from server.config import Settings
from server.engine.errors import EngineUnavailable

log = logging.getLogger("inferbox.guard")

OPEN_METHODS = ("GET", "HEAD")


class Guard:
    def __init__(self, app: Flask, settings: Settings) -> None:
        self.settings = settings
        open_paths = set(settings.open_paths)
        if settings.metrics_require_key:
            open_paths.discard("/metrics")
        if "/" in open_paths:  # the chat page's own script and style open with it (static, no data)
            from server.ui import ASSETS

            open_paths.update(ASSETS)
        self.open_paths = frozenset(open_paths)
        # an admin key (ADMIN_API_KEYS, for the adapter admin endpoints) is an API key too
        self.keys = settings.api_keys + settings.admin_api_keys if settings.api_keys else ()
        if not self.keys:
            log.warning("no API keys configured (API_KEYS / API_KEYS_FILE): every endpoint is open")
        app.before_request(self._check)  # before the limiter's hook: 401 before counting
        self.limiter: Limiter | None = None
        if settings.rate_limit:
            self.limiter = Limiter(
                key_func=self._rate_key,
                app=app,
                application_limits=[settings.rate_limit],  # one budget per key across all routes
                storage_uri=settings.rate_limit_storage_uri,
                strategy="fixed-window",
                on_breach=self._breach,
                swallow_errors=True,  # a storage outage must not take serving down with it:
                in_memory_fallback_enabled=True,  # count per process until the storage is back
                headers_enabled=False,  # we set Retry-After ourselves, in the dialect's response
            )
            self.limiter.request_filter(self._is_open)
            app.register_error_handler(RateLimitExceeded, _rate_limited)
            log.info("rate limit %s per key, storage %s", settings.rate_limit,
                     settings.rate_limit_storage_uri.split("://", 1)[0] + "://")
        app.register_error_handler(EngineUnavailable, _unavailable)
        app.register_error_handler(ApiError, _render)  # for dialects whose blueprint has no handler

    def _is_open(self) -> bool:
        return request.method in OPEN_METHODS and request.path in self.open_paths

    def _check(self) -> Response | None:
        if self._is_open():
            return None
        engine = current_app.extensions.get("inferbox.engine")
        if engine is not None and engine.draining:
            return _render(ApiError(503, "the server is shutting down; retry on another replica",
                                    kind="unavailable",
                                    headers={"Retry-After": "1", "Connection": "close"}))
        if self.keys:
            key = match_key(presented_keys(request.headers), self.keys)
            if key is None:
                missing = not presented_keys(request.headers)
                return _render(ApiError(
                    401,
                    "missing API key: send `Authorization: Bearer <key>`, `Authorization: <key>` "
                    "or `x-api-key: <key>`" if missing else "invalid API key",
                    kind="authentication_error",
                    headers={"WWW-Authenticate": "Bearer"},
                ))
            g.api_key_id = key_id(key)
        if request.method == "POST" and engine is not None and _queue_full(engine):
            # Shed load before the body is parsed or tokenized: rejections stay cheap, so a flood of
            # them cannot starve the engine thread of the GIL.
            return _render(ApiError(503, "server is overloaded: the request queue is full; retry later",
                                    kind="overloaded", headers={"Retry-After": "1"}))
        return None

    @staticmethod
    def _rate_key() -> str:
        return g.get("api_key_id") or f"addr-{request.remote_addr}"

    @staticmethod
    def _breach(limit: RequestLimit) -> Response:
        retry = min(max(1, math.ceil(limit.reset_at - time.time())), limit.limit.get_expiry())
        return _render(ApiError(429, f"rate limit exceeded ({limit.limit}); retry in {retry}s",
                                kind="rate_limit_exceeded", headers={"Retry-After": str(retry)}))


def _queue_full(engine: object) -> bool:
    sched = getattr(engine, "loop", None)
    depth, limit = getattr(sched, "queue_depth", None), getattr(sched, "max_queued", None)
    return isinstance(depth, int) and isinstance(limit, int) and depth >= limit


def _render(exc: ApiError) -> Response:
    resp = render(request.blueprint, exc)
    if isinstance(resp, tuple):  # a renderer may return (response, status)
        resp = current_app.make_response(resp)
    resp.status_code = exc.status
    resp.headers.update(exc.headers)
    return resp


def _rate_limited(exc: RateLimitExceeded) -> Response:
    if exc.response is not None:
        return exc.response
    return _render(ApiError(429, "rate limit exceeded", kind="rate_limit_exceeded",
                            headers={"Retry-After": "1"}))


def _unavailable(exc: EngineUnavailable) -> Response:
    """The engine is not loaded yet, draining, or dead (a dialect touched it before submitting)."""
    return _render(ApiError(503, str(exc), kind="unavailable", headers={"Retry-After": "5"}))


def install(app: Flask, settings: Settings) -> Guard:
    guard = Guard(app, settings)
    app.extensions["inferbox.guard"] = guard
    return guard
