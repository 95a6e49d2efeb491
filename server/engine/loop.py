"""The engine loop: the one thread that owns the model, and the queue HTTP threads submit to.

Each step is three lines: `step = policy.schedule()`, `out = runner.run(step)`,
`policy.update(step, out)`. The policy is guarded by one condition (HTTP threads add requests and
read its counters); the runner runs outside it, so submitting never waits for a forward pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from server.engine.errors import EngineUnavailable
from server.engine.lockstep import RankLost
from server.engine.policy import Policy
from server.engine.request import GenerationRequest
from server.engine.runner import ModelRunner

log = logging.getLogger(__name__)


class EngineLoop:
    def __init__(self, policy: Policy, runner: ModelRunner, window_s: float = 0.005,
                 on_step: Callable[[str, int, float], None] | None = None,
                 on_idle: Callable[[], None] | None = None, idle_s: float | None = None) -> None:
        self.policy = policy
        self.runner = runner
        self.window_s = window_s  # an idle loop waits this long so simultaneous arrivals share a prefill
        self.on_step = on_step  # metrics hook: (kind "prefill"/"decode", rows, seconds) per forward
        # called every `idle_s` while there is nothing to do (tensor parallelism: a heartbeat to the
        # other ranks, which would otherwise take rank 0's silence for its death)
        self.on_idle = on_idle
        self.idle_s = idle_s
        self._cond = threading.Condition()
        self._stopping = False
        self._calls: list[tuple[Callable[[], Any], Future]] = []  # run between two steps (call())
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    # what HTTP threads and the metrics see
    @property
    def stats(self):  # noqa: ANN201 - the policy's counters
        return self.policy.stats

    @property
    def max_queued(self) -> int:
        return self.policy.limits.max_queued

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return self.policy.queue_depth

    @property
    def running(self) -> int:
        """Sequences running now (read under the lock: never half-way through an update)."""
        with self._cond:
            return self.policy.active

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def ended(self) -> bool:
        """The loop's thread has run and returned (after `stop`, or after dying)."""
        return self._thread.ident is not None and not self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerationRequest) -> None:
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise EngineUnavailable("the engine is not running")
            self.policy.add(request)  # raises QueueFull
            self._cond.notify()

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run `fn` on the loop's thread between two steps (never during a forward pass) and return
        its result: how adapters change the model while requests run. Runs at once when the loop
        is not running or when called from the loop's own thread."""
        if threading.current_thread() is self._thread:
            return fn()
        future: Future = Future()
        with self._cond:
            if not self._thread.is_alive():
                if self._stopping:
                    raise EngineUnavailable("the engine is not running")
                return fn()  # not started yet: nothing else uses the model
            self._calls.append((fn, future))
            self._cond.notify()
        return future.result(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work; the thread ends once what it holds is done."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # the loop
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._wait_for_work():
                    self._run_calls()
                    if self.policy.has_work:
                        self.step()
                    elif self.on_idle is not None:
                        self.on_idle()
        finally:
            with self._cond:
                calls, self._calls = self._calls, []
            for _, future in calls:
                future.set_exception(EngineUnavailable("the engine stopped"))

    def _run_calls(self) -> None:
        with self._cond:
            calls, self._calls = self._calls, []
        for fn, future in calls:
            try:
                future.set_result(fn())
            except RankLost:  # the ranks are out of step: the loop ends (and the caller hears so)
                future.set_exception(EngineUnavailable("the engine stopped: a tensor-parallel rank was lost"))
                raise
            except BaseException as exc:  # handed to the caller's thread
                future.set_exception(exc)

    def _wait_for_work(self) -> bool:
        with self._cond:
            while not self.policy.has_work and not self._calls and not self._stopping:
                if not self._cond.wait(self.idle_s) and self.on_idle is not None:
                    return True  # idle for idle_s: the caller runs on_idle
            if self._stopping and not self.policy.has_work and not self._calls:
                return False  # stopping, nothing left
            idle = not self.policy.running and not self._calls
        if idle and self.window_s > 0:
            time.sleep(self.window_s)
        return True

    def step(self) -> None:
        step = None
        try:
            with self._cond:
                step = self.policy.schedule()
            started = time.perf_counter()
            out = self.runner.run(step)
            if step.kind in ("prefill", "decode") and self.on_step is not None:
                self.on_step(step.kind, len(step.rows), time.perf_counter() - started)
            with self._cond:
                self.policy.update(step, out)
        except Exception as exc:  # a bug in bookkeeping: fail the running rows, keep the loop alive
            log.exception("engine step failed")
            with self._cond:
                self.policy.fail_step(step, exc)
            self.runner.reset()
