"""In-process app on the embedded model: the per-request timeout ends generation with an answer, and
a dead engine loop thread turns /health to 503 and answers the clients that were waiting on it."""

from __future__ import annotations

import json
import threading
import time

import pytest

from server.app import create_app
from server.engine.engine import Engine
from tests.support.engine import embedded_settings
from tests.support.servers import MODEL_DIR

pytestmark = [pytest.mark.model,
              pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(), reason="run `make model`")]


def _app(**overrides):
    settings = embedded_settings(**overrides)
    engine = Engine(settings)
    app = create_app(settings, engine=engine)
    assert engine.wait_ready(180), engine.load_error
    return app, engine


def _sse(body: bytes) -> list:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in body.decode().splitlines() if line.startswith("data: ")]


def test_request_timeout_ends_generation_and_answers() -> None:
    app, engine = _app(request_timeout_s=1.0)
    client = app.test_client()
    t0 = time.monotonic()
    r = client.post("/chat", json={"prompt": "Count: one, two,", "stream": True,
                                   "generate_kwargs": {"max_new_tokens": 1000, "min_new_tokens": 1000}})
    body = r.get_data()
    elapsed = time.monotonic() - t0
    assert r.status_code == 200
    events = _sse(body)
    assert events[-1] == "[DONE]"
    final = [e for e in events if isinstance(e, dict) and e.get("finish_reason")]
    assert final and final[0]["finish_reason"] == "timeout"
    assert 0 < final[0]["completion_tokens"] < 1000
    assert elapsed < 60  # far below the 1000 tokens it asked for; bounded by the deadline, not the length
    r = client.post("/chat", json={"prompt": "Count:", "generate_kwargs": {"max_new_tokens": 1000,
                                                                          "min_new_tokens": 1000}})
    assert r.status_code == 200 and r.get_json()["Result"].startswith("Count:")
    assert client.get("/health").status_code == 200
    engine.drain(timeout=10)


class _Crash(BaseException):
    """Not an Exception: escapes the loop's per-step handler and kills its thread."""


def test_dead_engine_loop_makes_health_503_and_answers_waiting_clients(monkeypatch) -> None:
    app, engine = _app()
    client = app.test_client()
    assert client.get("/health").status_code == 200
    entered = threading.Event()

    def crash(*args, **kwargs):
        entered.set()
        time.sleep(0.2)
        raise _Crash("injected")

    monkeypatch.setattr(engine.loop, "step", crash)  # the loop's one step
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # keep the test output clean
    result: dict = {}

    def call() -> None:
        r = client.post("/chat", json={"prompt": "hi", "generate_kwargs": {"max_new_tokens": 2}})
        result["status"], result["body"] = r.status_code, r.get_json()

    t = threading.Thread(target=call)
    t.start()
    assert entered.wait(30)
    t.join(30)
    assert not t.is_alive(), "the waiting request hung after the engine loop died"
    assert result["status"] >= 500 and "engine stopped" in result["body"]["detail"]
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["detail"] == "Engine is not running"
    r = client.post("/chat", json={"prompt": "hi", "generate_kwargs": {"max_new_tokens": 2}})
    assert r.status_code == 503 and r.headers["Retry-After"]
