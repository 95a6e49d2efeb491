"""The engine of a handler-served model kind (embeddings, a user's MosaicML handler), with the same
surface the guard, `/health`, the drain and the metrics use for the chat engine: `loaded`,
`healthy`, `draining`, `load_error`, `loop` (queue depth, running rows) and `drain()`.

The handler is built on a background thread after gunicorn forks, like the chat model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from server.config import Settings
from server.engine.errors import EngineUnavailable
from server.engine.host import ModelHost
from server.kinds import loading
from server.kinds.base import HandlerFailure, ModelRequest, iterate, stream_of
from server.kinds.batcher import Job, PredictBatcher
from server.observability import metrics

log = logging.getLogger(__name__)


class HandlerTimeout(RuntimeError):
    """An input was not answered before REQUEST_TIMEOUT_S."""


@dataclass
class LoadedHandler:
    """What `engine.loaded` is for a handler kind: the handler, plus the model facts that `/metrics`
    reports for every kind (dtype and weight bytes, where the handler has a torch model)."""

    handler: Any
    dtype: Any = None
    weight_bytes: int = 0

    @classmethod
    def of(cls, handler: Any) -> LoadedHandler:
        model = getattr(handler, "model", None)
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        return cls(handler, params[0].dtype if params else None,
                   sum(p.numel() * p.element_size() for p in params))


class HandlerEngine(ModelHost):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.kind = settings.model_kind
        self.loaded: LoadedHandler | None = None  # the handler, once built
        self.loop: PredictBatcher | None = None
        self.limits = None  # no generation limits: the generation endpoints refuse this kind

    def _build(self) -> None:
        handler = loading.build(self.settings)
        s = self.settings
        batcher = PredictBatcher(handler, max_batch_size=s.max_batch_size,
                                 max_batch_tokens=s.max_batch_tokens, window_s=s.batch_window_ms / 1000.0,
                                 max_queued=s.max_queued_requests, on_batch=self._on_batch)
        batcher.start()
        self.loop = batcher
        self.loaded = LoadedHandler.of(handler)
        log.info("model handler %s ready (%s)", type(handler).__qualname__, self.kind)

    def _loop_died(self) -> None:
        log.critical("the batch thread died; /health reports 503; failing waiting inputs")
        assert self.loop is not None
        self.loop.fail_waiting("the engine stopped unexpectedly")

    @staticmethod
    def _on_batch(rows: int, seconds: float) -> None:
        metrics.record_step("predict", rows, seconds)

    # ------------------------------------------------------------------ request path
    @property
    def handler(self) -> Any:
        if self.loaded is None or self.loop is None:
            raise EngineUnavailable("the model is not loaded yet")
        if self.draining:
            raise EngineUnavailable("the server is shutting down")
        return self.loaded.handler

    def describe(self) -> dict[str, Any]:
        handler = self.loaded.handler if self.loaded is not None else None
        fn = getattr(handler, "describe", None)
        info = dict(fn()) if callable(fn) else {}
        info.setdefault("kind", self.kind)
        info.setdefault("handler", type(handler).__module__ + "." + type(handler).__qualname__
                        if handler is not None else None)
        return info

    def cost(self, request: ModelRequest) -> int:
        """The input's tokens (handlers that count them) or 1; the handler's `cost` validates."""
        handler = self.handler
        fn = getattr(handler, "cost", None)
        if not callable(fn):
            return 1
        try:
            return max(1, int(fn(request)))
        except Exception as exc:
            raise HandlerFailure(handler, exc) from exc

    def run(self, requests: list[ModelRequest], costs: list[int] | None = None) -> list[Any]:
        """Queue every input (batched with everyone else's), wait for all; outputs in input order.
        Raises HandlerFailure, HandlerTimeout, QueueFull or EngineUnavailable."""
        self.handler  # noqa: B018 - raises while loading or draining
        assert self.loop is not None
        deadline = time.monotonic() + self.settings.request_timeout_s
        costs = costs or [1] * len(requests)
        jobs = [Job(r, c, deadline) for r, c in zip(requests, costs, strict=True)]
        self.loop.submit(jobs)
        try:
            for job in jobs:
                if not job.done.wait(max(0.0, deadline - time.monotonic()) + 5.0) or job.expired:
                    limit = self.settings.request_timeout_s
                    raise HandlerTimeout(f"no answer within REQUEST_TIMEOUT_S={limit:g}s")
                if job.error is not None:
                    raise job.error
            return [job.output for job in jobs]
        finally:
            for job in jobs:
                job.cancelled = True  # no-op when done; skipped in the queue otherwise

    def can_stream(self) -> bool:
        return stream_of(self.handler) is not None

    def stream(self, request: dict[str, Any]) -> Iterator[str]:
        """The handler's `predict_stream(**request)` as text chunks (HandlerFailure on error)."""
        handler = self.handler
        fn = stream_of(handler)
        assert fn is not None and self.loop is not None
        return iterate(handler, self.loop.stream(fn, request))
