"""The thread-and-queue shell shared by the engine's two workers (the batch scheduler and the exact
`generate` lane): a FIFO guarded by one condition, one daemon thread, and a stop that lets the
thread finish what it holds."""

from __future__ import annotations

import threading
from collections import deque

from server.engine.request import GenerationRequest


class QueueWorker:
    def __init__(self, name: str) -> None:
        self._waiting: deque[GenerationRequest] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work; the thread ends once what it holds is done."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
