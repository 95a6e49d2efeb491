"""Kaito `/chat` against the real server (gunicorn, the embedded SmolLM2 model)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.integration

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"max_new_tokens": 20, "do_sample": False}


def chat(base_url: str, body: object, **kw) -> requests.Response:
    return requests.post(f"{base_url}/chat", json=body, timeout=120, **kw)


def test_root_and_health(base_url: str) -> None:
    assert requests.get(base_url + "/").json() == {"message": "Server is running"}
    assert requests.get(base_url + "/health").json() == {"status": "Healthy"}


def test_messages_answer_paris(base_url: str) -> None:
    r = chat(base_url, {"messages": FRANCE, "generate_kwargs": GREEDY})
    assert r.status_code == 200, r.text
    result = r.json()["Result"]
    assert "Paris" in result
    assert "<|im_start|>" not in result and "What is the capital" not in result  # the reply only


def test_prompt_return_full_text(base_url: str) -> None:
    prompt = "The capital of France is"
    full = chat(base_url, {"prompt": prompt, "generate_kwargs": {"max_new_tokens": 5, "do_sample": False}})
    new = chat(base_url, {"prompt": prompt, "return_full_text": False,
                          "generate_kwargs": {"max_new_tokens": 5, "do_sample": False}})
    assert full.status_code == new.status_code == 200
    assert full.json()["Result"] == prompt + new.json()["Result"]
    assert "Paris" in new.json()["Result"]


def test_prefix_is_prepended_to_the_model_input(base_url: str) -> None:
    kw = {"max_new_tokens": 4, "do_sample": False}
    plain = chat(base_url, {"prompt": " is", "return_full_text": False, "generate_kwargs": kw}).json()
    prefixed = chat(base_url, {"prompt": " is", "prefix": "The capital of France",
                               "return_full_text": False, "generate_kwargs": kw}).json()
    assert "Paris" in prefixed["Result"]
    assert plain["Result"] != prefixed["Result"]


def test_kaito_documented_full_request(base_url: str) -> None:
    """Kaito's README example with every generate_kwargs field."""
    body = {
        "prompt": "Tell me about Tuscany and its cities.",
        "return_full_text": False,
        "clean_up_tokenization_spaces": False,
        "prefix": None,
        "handle_long_generation": None,
        "generate_kwargs": {
            "max_length": 40, "min_length": 0, "do_sample": True, "early_stopping": False,
            "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0, "temperature": 1.0,
            "top_k": 10, "top_p": 1, "typical_p": 1, "repetition_penalty": 1, "length_penalty": 1,
            "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
            "num_return_sequences": 1, "output_scores": False, "return_dict_in_generate": False,
            "forced_bos_token_id": None, "forced_eos_token_id": None, "remove_invalid_values": None,
        },
    }
    r = chat(base_url, body)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["Result"], str)  # sampled: may legitimately stop at once


def test_beam_search(base_url: str) -> None:
    r = chat(base_url, {"prompt": "The capital of France is", "return_full_text": False,
                        "generate_kwargs": {"max_new_tokens": 8, "num_beams": 3, "do_sample": False}})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["Result"]


def test_no_repeat_ngram_size(base_url: str) -> None:
    # Greedy decoding of this prompt loops; with no_repeat_ngram_size=2 no bigram may repeat.
    kw = {"max_new_tokens": 40, "do_sample": False, "repetition_penalty": 1.0}
    prompt = "one two one two one two one two"
    looped = chat(base_url, {"prompt": prompt, "return_full_text": False, "generate_kwargs": kw}).json()
    banned = chat(base_url, {"prompt": prompt, "return_full_text": False,
                             "generate_kwargs": {**kw, "no_repeat_ngram_size": 2}}).json()
    assert looped["Result"] != banned["Result"]
    tok_resp = chat(base_url, {"prompt": prompt, "return_full_text": True,
                               "generate_kwargs": {**kw, "no_repeat_ngram_size": 2}}).json()["Result"]
    assert tok_resp.startswith(prompt)


def test_num_return_sequences_concatenated(base_url: str) -> None:
    kw = {"max_new_tokens": 6, "num_beams": 2, "num_return_sequences": 2, "do_sample": False}
    both = chat(base_url, {"prompt": "Hello", "return_full_text": False, "generate_kwargs": kw})
    one = chat(base_url, {"prompt": "Hello", "return_full_text": False,
                          "generate_kwargs": {**kw, "num_return_sequences": 1}})
    assert both.status_code == one.status_code == 200
    assert both.json()["Result"].startswith(one.json()["Result"])
    assert len(both.json()["Result"]) > len(one.json()["Result"])


def test_seeded_sampling_is_reproducible(base_url: str) -> None:
    body = {"prompt": "Once upon a time", "return_full_text": False,
            "generate_kwargs": {"max_new_tokens": 12, "do_sample": True, "temperature": 1.0,
                                "top_k": 50, "seed": 1234}}
    assert chat(base_url, body).json() == chat(base_url, body).json()


def test_stream_sse(base_url: str) -> None:
    body = {"prompt": "The capital of France is", "return_full_text": False, "stream": True,
            "generate_kwargs": {"max_new_tokens": 6, "do_sample": False}}
    plain = chat(base_url, {**body, "stream": False}).json()["Result"]
    with requests.post(f"{base_url}/chat", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = r.iter_lines(decode_unicode=True)
        events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["text"] for c in chunks) == plain
    final = chunks[-1]
    assert final["finish_reason"] == "length"
    assert final["completion_tokens"] == 6 and final["prompt_tokens"] > 0


def test_concurrent_greedy_equals_sequential(base_url: str) -> None:
    prompts = [
        "The capital of France is", "Water boils at", "My favourite colour is", "1, 2, 3, 4,",
        "The quick brown fox", "In the beginning", "Python is a programming language that",
        "The largest planet in the solar system is",
    ]

    def ask(p: str) -> str:
        r = chat(base_url, {"prompt": p, "return_full_text": False,
                            "generate_kwargs": {"max_new_tokens": 16, "do_sample": False}})
        assert r.status_code == 200, r.text
        return r.json()["Result"]

    sequential = [ask(p) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(ask, prompts))
    assert concurrent == sequential


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({}, 400, "prompt"),
        ({"generate_kwargs": {"max_new_tokens": 5}}, 400, "messages"),
        ({"prompt": "x", "messages": FRANCE}, 400, "not both"),
        ({"prompt": "x", "generate_kwargs": {"max_new_token": 5}}, 400, "max_new_token"),
        ({"prompt": "x", "generate_kwargs": {"max_new_tokens": -1}}, 400, "max_new_tokens"),
        ({"prompt": "x", "generate_kwargs": {"max_new_tokens": 0}}, 400, "max_new_tokens"),
        ({"prompt": "x", "generate_kwargs": {"max_new_tokens": "10"}}, 400, "max_new_tokens"),
        ({"prompt": "x", "generate_kwargs": {"temperature": -0.5}}, 400, "temperature"),
        ({"prompt": "x", "generate_kwargs": {"top_p": 0}}, 400, "top_p"),
        ({"prompt": "x", "generate_kwargs": {"top_p": 1.5}}, 400, "top_p"),
        ({"prompt": "x", "generate_kwargs": {"do_sample": "yes"}}, 400, "do_sample"),
        ({"prompt": "x", "generate_kwargs": {"num_beams": 1000}}, 400, "num_beams"),
        ({"prompt": "x", "generate_kwargs": {"max_new_tokens": 10_000_000}}, 400, "context length"),
        ({"prompt": "x", "generate_kwargs": {"eos_token_id": 10_000_000}}, 400, "vocabulary"),
        ({"prompt": "x", "generate_kwargs": []}, 422, "generate_kwargs"),
        ({"prompt": 5}, 422, "prompt"),
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 422, "role"),
        ({"messages": [{"role": "user"}]}, 422, "content"),
        ({"prompt": "x", "handle_long_generation": "shrink"}, 422, "handle_long_generation"),
        ({"prompt": "x", "stream": "yes"}, 422, "stream"),
    ],
)
def test_bad_input_is_4xx_with_detail(base_url: str, body: dict, status: int, needle: str) -> None:
    r = chat(base_url, body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"])
def test_body_not_a_json_object(base_url: str, raw: bytes) -> None:
    r = requests.post(f"{base_url}/chat", data=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400
    assert r.json()["detail"]


def test_oversize_body_is_413(base_url: str) -> None:
    r = requests.post(f"{base_url}/chat", data=b"{" + b" " * 2_000_000 + b"}", timeout=30,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert "detail" in r.json()


def test_unknown_route_and_method_are_json(base_url: str) -> None:
    assert requests.get(base_url + "/nope").status_code == 404
    r = requests.get(base_url + "/chat")
    assert r.status_code == 405 and r.json()["detail"]


def test_handle_long_generation_hole_keeps_the_tail(base_url: str) -> None:
    r = chat(base_url, {"prompt": "word " * 50 + "The capital of France is", "return_full_text": False,
                        "handle_long_generation": "hole",
                        "generate_kwargs": {"max_new_tokens": 4, "do_sample": False}})
    assert r.status_code == 200, r.text


def test_metrics_json_and_prometheus(base_url: str) -> None:
    data = requests.get(base_url + "/metrics").json()
    assert set(data) == {"gpu_info", "cpu_info", "model_info"}
    assert data["model_info"]["quantization"] == "none" and data["model_info"]["weight_bytes"] > 0
    assert data["cpu_info"]["total_cores"] >= 1 and "used" in data["cpu_info"]["memory"]
    prom = requests.get(base_url + "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    assert prom.headers["Content-Type"].startswith("text/plain")
    assert "inferbox_requests_total" in prom.text
    om = requests.get(base_url + "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
