"""Application factory: the Flask app, its dialect blueprints, and the engine they share."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from server.config import Settings, load_settings
from server.engine.engine import Engine
from server.kinds.service import HandlerEngine
from server.observability import access_log, metrics

log = logging.getLogger("inferbox")


def create_app(settings: Settings | None = None, engine: Engine | HandlerEngine | None = None,
               load_model: bool = True) -> Flask:
    settings = settings or load_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    app = Flask("inferbox")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    if engine is None:  # chat: the generation engine; other kinds: a model handler (server/kinds/)
        engine = Engine(settings) if settings.model_kind == "chat" else HandlerEngine(settings)
    app.extensions["inferbox.engine"] = engine
    app.extensions["inferbox.settings"] = settings

    from server.api import routes

    routes.register(app, settings.model_kind)
    access_log.install(app)
    _install_error_handlers(app)
    _install_operations(app, settings, engine)

    metrics.QUEUE_DEPTH.set_function(lambda: engine.loop.queue_depth if engine.loop else 0)
    metrics.BATCH_SIZE.set_function(lambda: engine.loop.running if engine.loop else 0)
    metrics.describe_model(settings.served_model_name, settings.quantization)
    metrics.WEIGHT_BYTES.set_function(lambda: engine.loaded.weight_bytes if engine.loaded else 0)

    if load_model and engine.loaded is None:
        engine.start(background=True)
    return app


def _install_operations(app: Flask, settings: Settings, engine: Engine) -> None:
    """Keys, rate limits and the drain gate for every route; in-flight counting for the drain."""
    from server.api.common import guard
    from server.lifecycle import InflightCounter

    guard.install(app, settings)
    counter = InflightCounter(app.wsgi_app)
    app.wsgi_app = counter  # type: ignore[method-assign]
    app.extensions["inferbox.inflight"] = counter
    metrics.INFLIGHT.set_function(lambda: counter.count)
    metrics.DRAINING.set_function(lambda: 1 if engine.draining else 0)


def _install_error_handlers(app: Flask) -> None:
    """Errors outside any dialect's routes (404, 405, 413, crashes) as JSON, never HTML."""

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        resp = jsonify({"detail": exc.description, "error": exc.name})
        resp.status_code = exc.code or 500
        if getattr(exc, "valid_methods", None):  # 405 must list what is allowed (RFC 9110)
            resp.headers["Allow"] = ", ".join(exc.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        log.exception("unhandled error: %s", type(exc).__name__)
        resp = jsonify({"detail": "internal server error", "error": "Internal Server Error"})
        resp.status_code = 500
        return resp
