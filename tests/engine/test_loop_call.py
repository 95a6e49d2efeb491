"""`EngineLoop.call`: model changes (adapters) run on the loop's thread between two steps, never
during one (a fake runner, no model)."""

from __future__ import annotations

import threading
import time

import pytest

from server.engine.errors import EngineUnavailable
from server.engine.loop import EngineLoop
from server.engine.policy import Policy
from server.engine.request import GenerationParams, GenerationRequest
from server.engine.step import Sampled, Step, StepOutput


class SlowRunner:
    """Each step takes a while and hands back one token per row; records whether it was running."""

    def __init__(self) -> None:
        self.in_step = False
        self.steps = 0

    def run(self, plan: Step) -> StepOutput:
        self.in_step = True
        time.sleep(0.01)
        self.steps += 1
        self.in_step = False
        return StepOutput(sampled=[Sampled(seq, 5) for seq in plan.rows])

    def reset(self) -> None:
        pass


def test_calls_run_between_steps_on_the_loop_thread() -> None:
    runner = SlowRunner()
    loop = EngineLoop(Policy(), runner, window_s=0)  # type: ignore[arg-type]
    assert loop.call(lambda: 7) == 7  # not started: runs at once
    loop.start()
    reqs = [GenerationRequest([1, 2], GenerationParams(max_new_tokens=20)) for _ in range(3)]
    for r in reqs:
        loop.submit(r)
    seen = []

    def change() -> str:
        seen.append((runner.in_step, threading.current_thread().name))
        return "done"

    while runner.steps < 3:
        time.sleep(0.005)
    results = [loop.call(change) for _ in range(5)]
    assert results == ["done"] * 5
    assert seen == [(False, "engine-loop")] * 5
    with pytest.raises(ZeroDivisionError):  # the caller gets the exception
        loop.call(lambda: 1 / 0)
    for r in reqs:
        assert r.stream.closed.wait(10)
    assert loop.call(lambda: "idle") == "idle"  # an idle loop wakes up for a call
    loop.stop(5)
    with pytest.raises(EngineUnavailable):
        loop.call(lambda: None)
