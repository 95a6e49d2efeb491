"""Graceful drain on SIGTERM, designed for Kubernetes' pod shutdown.

gunicorn's gthread worker, on SIGTERM, stops accepting connections at once and then waits for open
ones. That refuses new connections before the readiness probe has seen anything, and knows nothing
of streams still being generated. Instead, in the worker (installed by `post_worker_init`):

1. SIGTERM marks the engine draining: `/health` answers 503 (readiness fails, the endpoint is
   removed), new generation requests get 503 + `Connection: close` (clients retry elsewhere).
2. The worker keeps accepting for `DRAIN_DELAY_S`, so probes and late-routed clients get answers
   rather than refused connections (a preStop pause in the pod spec adds to this).
3. It waits until every in-flight request, streams included, has sent its last byte.
4. It stops the engine loop, then lets gunicorn's worker loop end; the master exits after it.

Steps 2-3 are bounded by `GRACEFUL_TIMEOUT` (minus a margin), after which the master kills anyway.

A tensor-parallel server that lost a rank cannot serve again: once the waiting requests have their
503s (`abandon`), the worker exits with gunicorn's boot-error status, which makes the master exit
too (instead of starting a worker that would wait for ranks that are gone), and the pod restarts.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("inferbox.lifecycle")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class InflightCounter:
    """WSGI middleware counting requests from arrival until their response body is closed, so a
    stream counts until its last chunk has been sent."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self._n = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    @property
    def count(self) -> int:
        return self._n

    def _leave(self) -> None:
        with self._lock:
            self._n -= 1
            if self._n == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._n > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            self._n += 1
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._leave()
            raise
        return _ClosingIterable(body, self._leave)


class _ClosingIterable:
    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._body = body
        self._on_close = on_close
        self._closed = False

    def __iter__(self):  # noqa: ANN204
        return iter(self._body)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


def drain(app: Any, stop_worker: Callable[[], None], grace_s: float) -> None:
    """The drain sequence (runs on its own thread). `app` is the Flask app made by create_app."""
    started = time.monotonic()
    engine = app.extensions["inferbox.engine"]
    settings = app.extensions["inferbox.settings"]
    counter: InflightCounter = app.extensions["inferbox.inflight"]
    budget = max(0.0, grace_s - 2.0)  # leave the master's kill a margin
    engine.draining = True
    log.info("SIGTERM: draining (health 503, new requests 503); %d request(s) in flight", counter.count)
    time.sleep(min(settings.drain_delay_s, budget))
    left = budget - (time.monotonic() - started)
    if not counter.wait_idle(max(0.0, left)):
        log.warning("drain: %d request(s) still in flight after %.0fs; stopping anyway",
                    counter.count, time.monotonic() - started)
    engine.drain(timeout=max(1.0, budget - (time.monotonic() - started)))
    log.info("drain: done in %.1fs; worker exits", time.monotonic() - started)
    stop_worker()


LOST_EXIT_STATUS = 3  # gunicorn's WORKER_BOOT_ERROR: the master halts (exits non-zero) instead of respawning
LOST_GRACE_S = 10.0  # at most this long for the failed requests' 503s to go out


def abandon(app: Any) -> None:
    """A tensor-parallel rank was lost: let in-flight requests send their 503s, then end the process."""
    counter: InflightCounter = app.extensions["inferbox.inflight"]
    counter.wait_idle(LOST_GRACE_S)
    log.critical("a tensor-parallel rank was lost; exiting with status %d so that the server restarts",
                 LOST_EXIT_STATUS)
    logging.shutdown()
    os._exit(LOST_EXIT_STATUS)


def close_while_draining(worker: Any, req: Any) -> None:
    """gunicorn `pre_request` hook: while draining, answer with `Connection: close` so kept-alive
    clients reconnect (to another replica) instead of reusing this connection. gunicorn ignores a
    Connection header set by the app, so this is done on its request object."""
    worker.log.debug("%s %s", req.method, req.path)  # what gunicorn's default hook does
    app = worker.wsgi
    engine = getattr(app, "extensions", {}).get("inferbox.engine")
    if engine is not None and engine.draining:
        req.must_close = True


def install_worker_drain(worker: Any) -> None:
    """gunicorn `post_worker_init` hook: replace the worker's SIGTERM handler with the drain."""
    app = worker.wsgi
    if not hasattr(app, "extensions") or "inferbox.engine" not in app.extensions:
        return
    grace = float(worker.cfg.graceful_timeout)
    state = {"started": False}

    def stop_worker() -> None:
        worker.alive = False

    def on_term(signum: int, frame: Any) -> None:
        if state["started"]:
            return
        state["started"] = True
        threading.Thread(target=drain, args=(app, stop_worker, grace), name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)
    app.extensions["inferbox.engine"].on_lost = lambda: abandon(app)  # called on the watchdog thread
