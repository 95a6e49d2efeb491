"""The predict batcher: concurrent inputs share calls, in arrival order, under a token budget; a
failing batch is answered with the failure and the thread keeps serving. No model and no sleeps:
when a batch is taken is a pure rule (`Fill`), tested with given times."""

from __future__ import annotations

import threading
import time

import pytest

from server.engine.errors import QueueFull
from server.kinds.base import HandlerFailure
from server.kinds.batcher import Fill, Job, PredictBatcher
from tests.kinds.fixtures.counting_handler import CountingHandler


def _job(x: object, cost: int = 1, deadline_s: float = 30.0) -> Job:
    return Job({"input": x, "parameters": {}}, cost, time.monotonic() + deadline_s)


@pytest.fixture
def make():
    started: list[PredictBatcher] = []

    def make(handler: object, **kwargs) -> PredictBatcher:
        b = PredictBatcher(handler, **kwargs)
        b.start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop(5)


def _wait(jobs: list[Job]) -> None:
    for j in jobs:
        assert j.done.wait(5)


def test_simultaneous_requests_share_one_predict_call(make) -> None:
    h = CountingHandler()
    b = make(h, window_s=0.3)
    jobs = [_job(i) for i in range(8)]
    threads = [threading.Thread(target=b.submit, args=([j],)) for j in jobs]
    for t in threads:
        t.start()
    _wait(jobs)
    assert h.calls == 1 and h.batches == [8]
    assert [j.output["echo"] for j in jobs] == [str(i) for i in range(8)]  # arrival order kept


def test_batch_size_and_token_budget_split_in_arrival_order(make) -> None:
    h = CountingHandler()
    b = make(h, window_s=0.2, max_batch_size=3, max_batch_tokens=40)
    # costs: rows x widest <= 40 -> [10, 10, 10] | [30] | [5, 5] ; 3 rows at most
    jobs = [_job(i, c) for i, c in enumerate([10, 10, 10, 30, 5, 5])]
    b.submit(jobs)
    _wait(jobs)
    assert h.batches == [3, 1, 2]
    assert [j.output["call"] for j in jobs] == [1, 1, 1, 2, 3, 3]


def test_an_input_larger_than_the_budget_runs_alone(make) -> None:
    h = CountingHandler()
    b = make(h, window_s=0.1, max_batch_tokens=8)
    jobs = [_job("a", 100), _job("b", 1)]
    b.submit(jobs)
    _wait(jobs)
    assert h.batches == [1, 1] and jobs[0].output["echo"] == "a"


@pytest.mark.parametrize("bad, status", [("bad", 400), ("missing", 400), ("boom", 500), ("short", 500)])
def test_a_failing_batch_gets_the_error_and_the_thread_keeps_serving(make, bad: str, status: int) -> None:
    h = CountingHandler()
    b = make(h, window_s=0.1)
    jobs = [_job("fine"), _job(bad)]
    b.submit(jobs)
    _wait(jobs)
    for j in jobs:  # the whole batch shares the failure
        assert isinstance(j.error, HandlerFailure) and j.error.status == status
        assert "tests.kinds.fixtures.counting_handler.CountingHandler" in j.error.message
    if status == 500:
        assert "boom" not in jobs[0].error.message and "secret" not in jobs[0].error.message
    later = _job("again")
    b.submit([later])
    _wait([later])
    assert later.error is None and later.output["echo"] == "again" and b.alive


def test_cancelled_and_expired_inputs_are_skipped(make) -> None:
    h = CountingHandler(delay_s=0.2)
    b = make(h, window_s=0.0, max_batch_size=1)
    first, gone, late, kept = _job("first"), _job("gone"), _job("late", deadline_s=0.05), _job("kept")
    gone.cancelled = True
    b.submit([first, gone, late, kept])
    _wait([first, gone, late, kept])
    assert late.expired and gone.output is None and late.output is None
    assert [b for b in h.batches] == [1, 1] and kept.output["echo"] == "kept"


def test_queue_limit(make) -> None:
    gate = threading.Event()
    h = CountingHandler(gate=gate)
    b = make(h, window_s=0.0, max_batch_size=1, max_queued=2)
    b.submit([_job("running")])
    assert h.entered.wait(5)  # taken by the thread, which holds it until the gate opens
    b.submit([_job(1), _job(2)])
    with pytest.raises(QueueFull):
        b.submit([_job(3)])
    gate.set()


def test_stream_takes_turns_with_batches(make) -> None:
    h = CountingHandler()
    b = make(h)
    chunks = []
    for chunk in b.stream(h.predict_stream, {"input": "one two three", "parameters": {}}):
        assert not b.model_lock.locked()  # released between chunks
        chunks.append(chunk)
    assert chunks == ["one ", "two ", "three "]


def test_stop_finishes_what_is_queued(make) -> None:
    h = CountingHandler(delay_s=0.05)
    b = make(h, window_s=0.0, max_batch_size=1)
    jobs = [_job(i) for i in range(3)]
    b.submit(jobs)
    b.stop(5)
    assert all(j.done.is_set() and j.output is not None for j in jobs)
    assert not b.alive


def test_under_concurrent_load_a_batch_waits_a_little_to_fill() -> None:
    """After a call of 2 that took 0.3 s, an input past the 5 ms window is still waited for, up to a
    quarter of that call (75 ms), until 2 wait."""
    fill = Fill.plan(100.0, 0.005, 32, last_rows=2, last_seconds=0.3, in_flight=(2, 2))
    assert fill.wait_s(100.0, 1) == pytest.approx(0.005)  # the window
    assert fill.wait_s(100.02, 1) == pytest.approx(0.055)  # past it: until the fill time ...
    assert fill.wait_s(100.02, 2) is None  # ... or until as many wait as were in flight
    assert fill.wait_s(100.075, 1) is None  # the fill time is over


def test_a_lone_client_is_not_kept_waiting() -> None:
    """After calls of one input (no concurrency) only the window is waited for."""
    fill = Fill.plan(100.0, 0.005, 32, last_rows=1, last_seconds=0.15, in_flight=(1, 1))
    assert fill.wait_s(100.001, 1) == pytest.approx(0.004)
    assert fill.wait_s(100.005, 1) is None


@pytest.mark.parametrize("last_seconds, window_s, now, waiting, wait", [
    (1.2, 0.005, 100.12, 3, None),  # 3 wait, as were in flight, past the window: go (fill time 0.3 s)
    (1.2, 0.005, 100.12, 2, 0.18),  # 2 of 3: wait for the third until the fill time
    (0.0, 0.4, 100.12, 3, 0.28),  # within the window 3 still wait for more: it is never cut short
    (0.0, 0.4, 100.12, 32, None),  # a full batch goes at once
])
def test_after_a_call_of_3_the_next_starts_once_3_wait_and_the_window_is_over(
        last_seconds: float, window_s: float, now: float, waiting: int, wait: float | None) -> None:
    """Past the window, the fill wait ends once as many inputs wait as were in flight (3 here), not
    MAX_BATCH_SIZE; the in-flight count never cuts the window itself."""
    fill = Fill.plan(100.0, window_s, 32, last_rows=3, last_seconds=last_seconds, in_flight=(3, 3))
    got = fill.wait_s(now, waiting)
    assert got == (None if wait is None else pytest.approx(wait))


def test_the_thread_follows_the_fill_rule(make) -> None:
    """The batch thread keeps to the rule: after a concurrent call, inputs that come while the next
    batch fills share one call (the handler's gate holds the first call; no sleeps)."""
    gate = threading.Event()
    h = CountingHandler(gate=gate)
    b = make(h, window_s=0.0)
    first = [_job("a"), _job("b")]
    b.submit(first)
    assert h.entered.wait(5)
    second = [_job("c"), _job("d")]
    b.submit(second)  # both wait while the first call runs
    gate.set()
    _wait([*first, *second])
    assert h.batches == [2, 2]
