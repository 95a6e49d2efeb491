"""The bench's closed-loop load: every request once, in a stable order, tokens over wall time."""

from __future__ import annotations

import threading

from bench.client import closed_loop


def test_closed_loop_asks_each_request_once_and_keeps_their_order() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def ask(i: int) -> tuple[int, str]:
        with lock:
            seen.append(i)
        return i + 1, f"text {i}"

    run = closed_loop(clients=3, per_client=2, ask=ask)
    assert sorted(seen) == list(range(6))
    assert run["tokens"] == sum(range(1, 7)) and run["tokens_per_s"] > 0
    assert list(run["texts"].items()) == [(i, f"text {i}") for i in range(6)]
