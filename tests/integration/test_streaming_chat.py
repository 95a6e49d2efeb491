"""Streaming `/chat` through the real server (gunicorn) under continuous batching."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.integration

GREEDY = {"max_new_tokens": 24, "do_sample": False}


def _stream(base_url: str, body: dict) -> list[dict | str]:
    events: list[dict | str] = []
    with requests.post(base_url + "/chat", json={**body, "stream": True}, stream=True, timeout=600) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                payload = line[len("data: "):]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def _chat(base_url: str, body: dict) -> str:
    resp = requests.post(base_url + "/chat", json=body, timeout=600)
    assert resp.status_code == 200, resp.text
    return resp.json()["Result"]


def _body(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Name a fruit and a number above {i}."}],
            "generate_kwargs": GREEDY}


def test_streamed_text_equals_the_whole_answer(base_url):
    body = _body(3)
    events = _stream(base_url, body)
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["finish_reason"] in ("length", "eos")
    assert final["prompt_tokens"] > 0 and 0 < final["completion_tokens"] <= 24
    text = "".join(e["text"] for e in events[:-1])
    assert len([e for e in events[:-1] if e["text"]]) > 1  # it arrived in pieces
    assert text == _chat(base_url, body)


def test_concurrent_streams_match_sequential_answers(base_url):
    bodies = [_body(i) for i in range(8)]
    sequential = [_chat(base_url, b) for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        streamed = list(pool.map(lambda b: _stream(base_url, b), bodies))
    texts = ["".join(e["text"] for e in ev[:-1]) for ev in streamed]
    assert texts == sequential


def _path_count(base_url: str, path: str) -> float:
    text = requests.get(base_url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
    pattern = r"^inferbox_engine_path_total\{path=\"" + path + r"\"\} ([0-9.e+]+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_engine_path_metric_shows_batched_and_exact_generate(base_url):
    batched, exact = _path_count(base_url, "batched"), _path_count(base_url, "exact")
    _chat(base_url, {"prompt": "The sky is", "generate_kwargs": {"max_new_tokens": 4, "do_sample": False}})
    assert _path_count(base_url, "batched") == batched + 1
    _chat(base_url, {"prompt": "The sky is", "generate_kwargs": {"max_new_tokens": 4, "num_beams": 2,
                                                               "do_sample": False}})
    assert _path_count(base_url, "exact") == exact + 1
    text = requests.get(base_url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
    assert re.search(r"^inferbox_running_batch_size \d", text, re.M)


def test_client_disconnect_frees_the_slot(base_url):
    body = {"prompt": "Tell a very long story.", "stream": True,
            "generate_kwargs": {"max_new_tokens": 2000, "min_new_tokens": 2000, "do_sample": False}}
    with requests.post(base_url + "/chat", json=body, stream=True, timeout=600) as resp:
        lines = resp.iter_lines(decode_unicode=True)
        assert any(line.startswith("data: ") for line in lines)
    # the server notices at its next write, cancels, and the engine drops the row
    for _ in range(240):
        text = requests.get(base_url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
        if re.search(r"^inferbox_running_batch_size 0", text, re.M):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the disconnected request kept its batch slot")
