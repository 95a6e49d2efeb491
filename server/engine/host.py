"""What every model kind shares with the guard, `/health`, the drain and the metrics: the model loads
on a background thread after gunicorn forks (so `/health` answers 503 until it is ready instead of the
worker blocking its HTTP threads), a watchdog notices a dead loop thread, and a drain stops the loop.

`Engine` (generation) and `HandlerEngine` (embeddings, a user's handler) fill in `_build` (load the
model, start `self.loop`) and `_loop_died` (answer whoever still waits).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from server.config import Settings

log = logging.getLogger(__name__)


class ServingLoop(Protocol):
    """What the guard, `/health`, the drain and the metrics read of either engine's loop: the chat
    engine's `EngineLoop` or a handler kind's `PredictBatcher`."""

    @property
    def alive(self) -> bool: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def running(self) -> int: ...

    def stop(self, timeout: float | None = None) -> None: ...


class ModelHost:
    kind: str = "chat"  # the model kind served: chat, embedding or handler (MODEL_KIND)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop: ServingLoop | None = None
        self.load_error: str | None = None
        self.draining = False
        self._ready = threading.Event()

    def start(self, background: bool = True) -> None:
        if background:
            threading.Thread(target=self._load, name="model-loader", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        try:
            import torch

            if self.settings.torch_threads > 0:
                torch.set_num_threads(self.settings.torch_threads)
            self._build()
            self._ready.set()
            threading.Thread(target=self._watch, name="engine-watchdog", daemon=True).start()
        except Exception as exc:  # keep serving /health (as unhealthy) rather than crash-looping
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")  # the image test greps this

    def _build(self) -> None:
        raise NotImplementedError

    def _loop_died(self) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def healthy(self) -> bool:
        return self._ready.is_set() and self.loop is not None and self.loop.alive

    def _watch(self, period: float = 0.5) -> None:
        """If the loop's thread dies (not stopped by a drain), fail what it held: `/health` already
        says 503 (so Kubernetes restarts the pod); this answers the waiting clients."""
        loop = self.loop
        if loop is None:
            return
        while not self.draining and loop.alive:
            time.sleep(period)
        if not self.draining:
            self._loop_died()

    def drain(self, timeout: float | None = None) -> None:
        self.draining = True
        if self.loop is not None:
            self.loop.stop(timeout)
