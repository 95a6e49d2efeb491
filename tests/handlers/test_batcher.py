"""The predict batcher: concurrent inputs share calls, in arrival order, under a token budget; a
failing batch is answered with the failure and the thread keeps serving. No model, no sleeps
beyond the batch window."""

from __future__ import annotations

import threading
import time

import pytest

from server.engine.errors import QueueFull
from server.handlers.base import HandlerFailure
from server.handlers.batcher import Job, PredictBatcher
from tests.handlers.fixtures.counting_handler import CountingHandler


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
        assert "tests.handlers.fixtures.counting_handler.CountingHandler" in j.error.message
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
    h = CountingHandler(delay_s=0.3)
    b = make(h, window_s=0.0, max_batch_size=1, max_queued=2)
    b.submit([_job("running")])
    time.sleep(0.05)  # taken by the thread
    b.submit([_job(1), _job(2)])
    with pytest.raises(QueueFull):
        b.submit([_job(3)])


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


def test_under_concurrent_load_a_batch_waits_a_little_to_fill(make) -> None:
    h = CountingHandler(delay_s=0.3)
    b = make(h, window_s=0.005)
    first = [_job("a"), _job("b")]
    b.submit(first)  # two at once: concurrent load; the call takes ~0.3 s
    _wait(first)
    early, late = _job("c"), _job("d")
    b.submit([early])
    time.sleep(0.02)  # past the 5 ms window, within a quarter of the last call (75 ms)
    b.submit([late])
    _wait([early, late])
    assert h.batches == [2, 2]


def test_a_lone_client_is_not_kept_waiting(make) -> None:
    h = CountingHandler(delay_s=0.15)
    b = make(h, window_s=0.005)
    for x in ("a", "b"):  # one input per call: no concurrency, no extra wait
        j = _job(x)
        b.submit([j])
        _wait([j])
    j1, j2 = _job("c"), _job("d")
    b.submit([j1])
    time.sleep(0.05)
    b.submit([j2])
    _wait([j1, j2])
    assert h.batches == [1, 1, 1, 1]


@pytest.mark.parametrize("delay_s, window_s, late, batches", [
    (1.2, 0.005, 1, [3, 3, 1]),  # fill time 0.3 s: the late input, past the window, is not waited for
    (0.0, 0.4, 2, [3, 5]),  # within the window it still shares the call
])
def test_after_a_call_of_3_the_next_starts_once_3_wait_and_the_window_is_over(
        make, delay_s: float, window_s: float, late: int, batches: list[int]) -> None:
    """Past the window, the fill wait ends once as many inputs wait as were in flight (3 here), not
    MAX_BATCH_SIZE; the in-flight count never cuts the window itself."""
    h = CountingHandler(delay_s=delay_s)
    b = make(h, window_s=window_s)
    first = [_job(i) for i in range(3)]
    b.submit(first)
    _wait(first)
    again = [_job(i) for i in range(3, 6)]
    b.submit(again)
    time.sleep(0.12)
    later = [_job(6 + k) for k in range(late)]
    b.submit(later)
    _wait([*again, *later])
    assert h.batches == batches
