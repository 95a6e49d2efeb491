"""`/tokenize` and `/detokenize` on the real server: round trips, the same count the engine uses for a
chat request, special tokens, and the template options."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.integration

TEXTS = ["The capital of France is Paris.", "  leading spaces, émojis 🎉 and\nnew lines\t", "x"]


def _post(base_url: str, path: str, body: dict) -> dict:
    r = requests.post(base_url + path, json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("text", TEXTS)
def test_prompt_round_trips(base_url: str, text: str) -> None:
    tok = _post(base_url, "/tokenize", {"model": "m", "prompt": text})
    assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] == 8192
    assert tok["token_strs"] is None
    assert _post(base_url, "/detokenize", {"model": "m", "tokens": tok["tokens"]})["prompt"] == text


def test_chat_messages_count_what_the_engine_sees(base_url: str) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    tok = _post(base_url, "/tokenize", {"messages": messages, "return_token_strs": True})
    chat = _post(base_url, "/v1/chat/completions", {"messages": messages, "max_tokens": 1, "temperature": 0})
    assert tok["count"] == chat["usage"]["prompt_tokens"]
    assert len(tok["token_strs"]) == tok["count"] and tok["token_strs"][0] == "<|im_start|>"
    text = _post(base_url, "/detokenize", {"tokens": tok["tokens"]})["prompt"]
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    open_ended = _post(base_url, "/tokenize", {"messages": messages, "add_generation_prompt": False})
    assert open_ended["tokens"] == tok["tokens"][:open_ended["count"]] and open_ended["count"] < tok["count"]


def test_out_of_vocabulary_ids_are_400(base_url: str) -> None:
    r = requests.post(base_url + "/detokenize", json={"tokens": [1, 10**9]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
