"""One thread that owns the handler: concurrent inputs share `predict` calls.

Inputs wait in one FIFO. Before each call the thread waits `BATCH_WINDOW_MS` for simultaneous
arrivals (for one client alone this only adds to its latency: `BATCH_WINDOW_MS=0` if that is the
traffic). While requests come concurrently (the last call had more than one input) it may wait
longer for the batch to fill, up to a quarter of the last call's time (at most `FILL_CAP_S`), but
past the window only until as many inputs wait as were in flight when one of the last two calls
ended (its inputs, whose callers are on their way back, plus those already waiting; two, so that
one caller whose next input came a moment late does not shrink every later batch): a call's fixed
cost (one pass over every layer, thread start-up) is shared by more rows if they join, and waiting
for more than are coming only idles the model. Then it takes inputs in arrival order while the
batch stays within `MAX_BATCH_SIZE` rows and `MAX_BATCH_TOKENS` (rows x the longest input's tokens,
i.e. counted with padding; an input larger than the budget still runs, alone). Inputs whose caller
went away or whose deadline passed are skipped. A `predict` that raises fails every input of that
batch, and the thread keeps serving.

Splitting a closed-loop crowd into two alternating cohorts (one computing while the other's callers
come back) was tried and dropped: whole batches do more per row (docs/architecture/decisions.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from server.engine.errors import EngineUnavailable, QueueFull
from server.kinds.base import HandlerFailure, ModelRequest

log = logging.getLogger(__name__)

FILL_FRACTION = 0.25  # of the last predict call's time, waited at most for a batch to fill
FILL_CAP_S = 1.0


@dataclass(frozen=True)
class Fill:
    """How long the batch thread waits for more inputs, decided when it starts gathering a batch
    (from the last calls); `wait_s` is then asked each time the queue or the clock moves."""

    window_end: float  # simultaneous arrivals are always waited for until here
    fill_end: float  # under concurrent load, until here at most
    target: int  # past the window, enough once this many wait
    max_batch_size: int

    @classmethod
    def plan(cls, now: float, window_s: float, max_batch_size: int, last_rows: int, last_seconds: float,
             in_flight: tuple[int, int]) -> Fill:
        fill_end, target = now + window_s, max_batch_size
        if last_rows > 1:  # concurrent load: callers of the last call are on their way back
            fill_end = now + max(window_s, min(FILL_CAP_S, FILL_FRACTION * last_seconds))
            target = min(target, max(in_flight))
        return cls(now + window_s, fill_end, target, max_batch_size)

    def wait_s(self, now: float, waiting: int) -> float | None:
        """Seconds to wait for more inputs, or None: take the batch now."""
        if waiting >= self.max_batch_size or now >= self.fill_end:
            return None
        if now >= self.window_end:
            return None if waiting >= self.target else self.fill_end - now
        return self.window_end - now


@dataclass
class Job:
    """One input of one HTTP request, waiting for its output."""

    request: ModelRequest
    cost: int
    deadline: float
    arrival: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    output: Any = None
    error: HandlerFailure | None = None
    expired: bool = False
    cancelled: bool = False


class PredictBatcher:
    def __init__(self, handler: Any, max_batch_size: int = 32, max_batch_tokens: int = 16384,
                 window_s: float = 0.005, max_queued: int = 256,
                 on_batch: Callable[[int, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.handler = handler
        self._clock = clock  # deadlines and the fill wait (tests give their own)
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.window_s = window_s
        self.max_queued = max_queued
        self.on_batch = on_batch
        self.running = 0  # rows in the predict call now running
        self.batches = 0  # predict calls made
        self._last_rows = 0
        self._in_flight = (0, 0)  # each of the last two calls: its inputs plus those waiting when it ended
        self._last_seconds = 0.0
        self.model_lock = threading.Lock()  # one model call at a time: a batch or a stream's next chunk
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="predict-batcher", daemon=True)

    # ------------------------------------------------------------------ the HTTP side
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, jobs: list[Job]) -> None:
        """Queue every input of one request, or none of them."""
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise EngineUnavailable("the engine is not running")
            if len(self._waiting) + len(jobs) > self.max_queued and self._waiting:
                raise QueueFull(f"{len(self._waiting)} inputs are waiting (MAX_QUEUED_REQUESTS="
                                f"{self.max_queued})")
            self._waiting.extend(jobs)
            self._cond.notify()

    def stream(self, fn: Callable[..., Any], request: dict[str, Any]) -> Iterator[Any]:
        """A handler's `predict_stream(**request)`, advanced one chunk at a time under the model lock
        so it takes turns with the batches instead of oversubscribing the device."""
        it = iter(fn(**request))
        while True:
            with self.model_lock:
                try:
                    chunk = next(it)
                except StopIteration:
                    return
            yield chunk

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work; the thread ends once what is queued is done."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def fail_waiting(self, message: str) -> None:
        with self._cond:
            jobs, self._waiting = list(self._waiting), deque()
        for job in jobs:
            job.error = HandlerFailure(self.handler, RuntimeError(message))
            job.done.set()

    # ------------------------------------------------------------------ the batch thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    return
                self._gather()
                batch = self._take()
            if batch:
                self._predict(batch)

    def _gather(self) -> None:
        """Give simultaneous arrivals the window to join this batch, and under concurrent load the
        callers just answered a little longer (see the module docstring)."""
        fill = Fill.plan(self._clock(), self.window_s, self.max_batch_size, self._last_rows,
                         self._last_seconds, self._in_flight)
        while not self._stopping:
            wait = fill.wait_s(self._clock(), len(self._waiting))
            if wait is None:
                break
            self._cond.wait(wait)

    def _take(self) -> list[Job]:
        batch: list[Job] = []
        widest = 0
        now = self._clock()
        while self._waiting and len(batch) < self.max_batch_size:
            job = self._waiting[0]
            if job.cancelled or now > job.deadline:
                self._waiting.popleft()
                job.expired = not job.cancelled
                job.done.set()
                continue
            w = max(widest, job.cost)
            if batch and w * (len(batch) + 1) > self.max_batch_tokens:
                break
            batch.append(self._waiting.popleft())
            widest = w
        return batch

    def _predict(self, batch: list[Job]) -> None:
        started = self._clock()
        self.running = len(batch)
        try:
            with self.model_lock:
                outputs = self.handler.predict([j.request for j in batch])
            if not isinstance(outputs, (list, tuple)) or len(outputs) != len(batch):
                got = len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__
                raise RuntimeError(f"predict returned {got} outputs for {len(batch)} inputs")
            for job, out in zip(batch, outputs, strict=True):
                job.output = out
        except Exception as exc:  # the batch fails, the thread keeps serving
            failure = HandlerFailure(self.handler, exc)
            # type only: a handler's message may quote its input, which must never reach the logs
            log.warning("predict failed for a batch of %d: %s", len(batch), type(exc).__name__)
            for job in batch:
                job.error = failure
        finally:
            self.running = 0
            self.batches += 1
            self._last_rows, self._last_seconds = len(batch), self._clock() - started
            self._in_flight = (self._in_flight[1], len(batch) + len(self._waiting))
            for job in batch:
                job.done.set()
            if self.on_batch is not None:
                self.on_batch(len(batch), self._clock() - started)
