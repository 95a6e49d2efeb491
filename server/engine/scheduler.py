"""The scheduler: the one thread that owns the model.

HTTP threads call `submit` and then wait on the request's stream. This first batcher gathers the
requests that arrive within a short window and runs those whose parameters match as one
left-padded `generate` call; the continuous-batching engine replaces `_loop`, not this interface.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from server.engine.request import GenerationParams, GenerationRequest
from server.engine.runner import ModelRunner

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests are waiting than MAX_QUEUED_REQUESTS allows."""


class EngineUnavailable(RuntimeError):
    """The engine is not running (not loaded yet, draining, or its thread died)."""


def batch_key(params: GenerationParams) -> str:
    """Requests with equal keys can share one generate call (seeded sampling runs alone)."""
    fields = params.generate_kwargs()
    fields["logprobs"] = (params.logprobs, params.top_logprobs)
    fields["stop"] = params.stop
    if params.do_sample and params.seed is not None:
        fields["seed"] = params.seed
        fields["_alone"] = id(params)
    return json.dumps(fields, sort_keys=True, default=str)


class Scheduler:
    def __init__(self, runner: ModelRunner, max_batch_size: int = 8, window_s: float = 0.005,
                 max_queued: int = 256, on_step: Callable[[str, int], None] | None = None) -> None:
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.max_queued = max_queued
        self.on_step = on_step  # metrics hook: (path, batch size)
        self._waiting: deque[GenerationRequest] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.running = 0
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    def submit(self, request: GenerationRequest) -> None:
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise EngineUnavailable("the engine is not running")
            if len(self._waiting) >= self.max_queued:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(request)
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take_group(self) -> list[GenerationRequest]:
        with self._cond:
            while not self._waiting and not self._stopping:
                self._cond.wait()
            if not self._waiting:
                return []
        time.sleep(self.window_s)  # let simultaneous arrivals join
        with self._cond:
            first = self._waiting.popleft()
            key = batch_key(first.params)
            group = [first]
            rest: deque[GenerationRequest] = deque()
            while self._waiting and len(group) < self.max_batch_size:
                r = self._waiting.popleft()
                (group if batch_key(r.params) == key else rest).append(r)
            rest.extend(self._waiting)
            self._waiting = rest
        return [r for r in group if not _drop_cancelled(r)]

    def _run(self) -> None:
        while True:
            group = self._take_group()
            if not group:
                if self._stopping and not self._waiting:
                    return
                continue
            self.running = len(group)
            try:
                if self.on_step:
                    self.on_step("generate", len(group))
                self.runner.generate(group)
            except Exception as exc:  # one failed call fails its requests, not the server
                log.exception("generation failed for %d request(s)", len(group))
                client = isinstance(exc, (ValueError, TypeError))
                for r in group:
                    r.stream.fail(f"generation failed: {type(exc).__name__}: {exc}" if client
                                  else "generation failed", client_error=client)
            finally:
                self.running = 0


def _drop_cancelled(r: GenerationRequest) -> bool:
    if r.stream.cancelled:
        for i in range(r.params.num_return_sequences):
            r.stream.finish(i, "cancelled")
        return True
    return False
