"""The structured check against a stand-in server: the request bodies of both arms, A/B alternation,
token counts from `usage`, and mask ms/step from /metrics deltas (the server's real metric series
and exposition), then the table's verdict on given numbers. No model, no sleeps."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bench import structured_check as sc
from server.observability import metrics

MASK_S_PER_ROW = 0.002  # the stand-in's mask cost: 2 ms per constrained row and step
DECODE_S = 0.01


class StandIn(BaseHTTPRequestHandler):
    """OpenAI chat: `max_tokens` tokens (structured) or `min_tokens` (plain), one decode step per
    token; each structured step records one masked row, as the engine would."""

    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        body, content_type = metrics.prometheus_exposition(self.headers.get("Accept", ""))
        self._send(200, body, content_type)

    def do_POST(self) -> None:
        assert self.path == "/v1/chat/completions"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        structured = "response_format" in body
        n = body["max_tokens"] if structured else body["min_tokens"]
        with self.lock:
            self.bodies.append(body)
            for _ in range(n):
                if structured:
                    metrics.record_mask(1, MASK_S_PER_ROW)
                metrics.record_step("decode", 1, DECODE_S)
        answer = {"choices": [{"finish_reason": "length", "message": {"role": "assistant", "content": "{"}}],
                  "usage": {"prompt_tokens": 20, "completion_tokens": n, "total_tokens": 20 + n}}
        self._send(200, json.dumps(answer).encode(), "application/json")


@pytest.fixture
def stand_in() -> Iterator[str]:
    StandIn.bodies = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_check_alternates_arms_and_reads_mask_time_from_metrics(stand_in: str) -> None:
    check = sc.structured_check(stand_in, [1, 4], repeats=2, rounds=2, sequential=3, new_tokens=12)
    bodies = StandIn.bodies
    warm, rest = bodies[0], bodies[1:]
    assert warm["response_format"] == sc.RESPONSE_FORMAT and warm["max_tokens"] == 8
    # c=1: 3 requests per arm run; the arms go plain, structured, then structured, plain
    arms = ["structured" if "response_format" in b else "plain" for b in rest[:12]]
    assert arms == ["plain"] * 3 + ["structured"] * 6 + ["plain"] * 3
    for b in rest:
        assert b["max_tokens"] == 12 and b["temperature"] == 0
        if "response_format" in b:
            fmt = b["response_format"]
            assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
            assert "min_tokens" not in b  # constrained rows decide their own end
        else:
            assert b["min_tokens"] == 12
    # the two arms send the same prompts
    prompts = {("response_format" in b, b["messages"][0]["content"]) for b in rest}
    assert {p for s, p in prompts if s} == {p for s, p in prompts if not s}

    c1, c4 = check["levels"]
    assert [c1["clients"], c4["clients"]] == [1, 4]
    assert len(c4["runs"]["plain"]) == len(c4["runs"]["structured"]) == 2
    assert all(r["requests"] == 8 and r["tokens"] == 96 for r in c4["runs"]["structured"])
    assert c1["runs"]["plain"][0]["requests"] == 3
    for lv in (c1, c4):
        assert lv["plain_tokens_per_request"] == lv["structured_tokens_per_request"] == 12
        assert lv["tokens_gap"] == 0
        assert lv["mask_steps"] == 12 * lv["runs"]["structured"][0]["requests"] * 2
        assert lv["mask_ms_per_step"] == pytest.approx(1000 * MASK_S_PER_ROW)
        assert lv["mask_rows_per_step"] == pytest.approx(1.0)
        assert lv["decode_ms_per_step"] == pytest.approx(1000 * DECODE_S)
        assert len(lv["pair_ratios"]) == 2 and lv["ratio"] > 0
    assert all(r["mask_steps"] == 0 for r in c4["runs"]["plain"])
    assert c4["runs"]["structured"][0]["finish_reasons"] == {"length": 8}
    lines = sc.structured_table_lines(check)
    assert len(lines) == 4 and "2.000" in lines[2] and "12/12" in lines[3]


def _run(tps: float, per_request: float, mask_ms: float, rows: float = 8.0) -> dict[str, Any]:
    steps = 100.0
    return {"requests": 8, "tokens": per_request * 8, "wall_s": per_request * 8 / tps, "tokens_per_s": tps,
            "tokens_per_request": per_request, "finish_reasons": {"length": 8}, "mask_steps": steps,
            "mask_seconds": mask_ms * steps / 1000, "mask_ms_per_step": mask_ms, "mask_rows_per_step": rows,
            "decode_steps": steps, "decode_ms_per_step": 50.0}


def _plain(tps: float) -> dict[str, Any]:
    return {**_run(tps, 64, 0.0, 0.0), "mask_steps": 0.0, "mask_seconds": 0.0}


def test_table_flags_a_short_ratio_and_a_token_gap() -> None:
    ok = sc.summarize_level(8, {"plain": [_plain(100), _plain(90), _plain(110)],
                                "structured": [_run(95, 64, 1.0), _run(91, 64, 3.0), _run(99, 64, 2.0)]})
    assert ok["ratio"] == pytest.approx(95 / 100)
    assert ok["pair_ratios"] == pytest.approx([0.95, 91 / 90, 0.9])
    assert ok["mask_ms_per_step"] == pytest.approx(2.0) and ok["mask_rows_per_step"] == pytest.approx(8.0)
    slow = sc.summarize_level(8, {"plain": [_plain(100)], "structured": [_run(85, 64, 1.0)]})
    short_tokens = sc.summarize_level(8, {"plain": [_plain(100)], "structured": [_run(99, 50, 1.0)]})
    assert short_tokens["tokens_gap"] == pytest.approx(14 / 64)
    other_level = sc.summarize_level(32, {"plain": [_plain(100)], "structured": [_run(50, 64, 1.0)]})
    lines = sc.structured_table_lines({"new_tokens": 64, "levels": [ok, slow, short_tokens, other_level]})
    assert lines[2].endswith("ok") and " 0.95 " in lines[2] and "64/64" in lines[2]
    assert lines[3].endswith("SHORT") and lines[4].endswith("SHORT") and "64/50" in lines[4]
    assert "ok" not in lines[5] and "SHORT" not in lines[5]  # the target is at c = 8 only
