"""Streams shared by the dialects (engine_calls.stream_text / stream_many) over real sockets."""

from __future__ import annotations

import json

import pytest
import requests

pytestmark = pytest.mark.integration


def test_kaito_chat_stream_still_streams(base_url: str) -> None:
    r = requests.post(base_url + "/chat", json={"prompt": "The capital of France is", "stream": True,
                                               "return_full_text": False,
                                               "generate_kwargs": {"max_new_tokens": 4, "do_sample": False}},
                      stream=True, timeout=120)
    lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert "Paris" in "".join(e["text"] for e in events)
    assert events[-1]["finish_reason"] == "length" and events[-1]["completion_tokens"] == 4

