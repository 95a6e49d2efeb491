"""SIGTERM drains: /health and new requests answer 503 while a stream in flight finishes, then the
server exits within its grace period."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import requests

from tests.support.servers import MODEL_DIR, start_server

pytestmark = pytest.mark.integration

GRACE = 90


def test_sigterm_during_a_stream_lets_it_finish(tmp_path) -> None:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail("run `make model`")
    srv = start_server(tmp_path, {"DRAIN_DELAY_S": "1", "GRACEFUL_TIMEOUT": str(GRACE)})
    try:
        stream = requests.post(srv.url + "/chat", stream=True, timeout=GRACE, json={
            "prompt": "Once upon a time", "stream": True,
            "generate_kwargs": {"max_new_tokens": 10, "min_new_tokens": 10}})
        assert stream.status_code == 200
        lines = stream.iter_lines(decode_unicode=True)
        events = []
        for line in lines:  # wait for the first token: the request is really in flight
            if line.startswith("data: "):
                events.append(line[6:])
                break
        rest: list[str] = []
        reader = threading.Thread(
            target=lambda: rest.extend(ln[6:] for ln in lines if ln.startswith("data: ")))
        reader.start()
        t_term = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)

        health = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and health != 503:
            health = requests.get(srv.url + "/health", timeout=10).status_code  # still accepting
            time.sleep(0.1)
        assert health == 503, "/health did not turn 503 while draining"
        newreq = requests.post(srv.url + "/chat", timeout=10,
                               json={"prompt": "x", "generate_kwargs": {"max_new_tokens": 1}})
        assert newreq.status_code == 503, "new requests were not refused while draining"
        assert newreq.headers["Connection"] == "close" and "shutting down" in newreq.json()["detail"]

        reader.join(GRACE)
        events += rest
        assert events[-1] == "[DONE]", events[-3:]
        final = [json.loads(e) for e in events[:-1] if "finish_reason" in e]
        assert final and final[0]["finish_reason"] == "length" and final[0]["completion_tokens"] == 10

        srv.proc.wait(GRACE)
        assert time.monotonic() - t_term < GRACE
        assert srv.proc.returncode == 0
        log = srv.log()
        assert "SIGTERM: draining" in log and "drain: done" in log
        assert "still in flight" not in log
    finally:
        srv.stop()
