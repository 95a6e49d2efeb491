"""MosaicML dialect against the real server, over plain HTTP as MLflow's gateway and curl send it."""

from __future__ import annotations

import json

import pytest
import requests

from tests.support.schema_check import check

pytestmark = pytest.mark.integration

PROMPTS = ["The capital of France is", "The capital of Germany is"]
GREEDY = {"max_new_tokens": 5, "temperature": 0}


def _predict(base_url: str, body: dict, path: str = "/predict") -> requests.Response:
    return requests.post(base_url + path, json=body, headers={"Authorization": "some-key"}, timeout=120)


@pytest.mark.parametrize("path", ["/predict", "/v1/predict"])
def test_batch_answers_each_input(base_url: str, path: str) -> None:
    r = _predict(base_url, {"inputs": PROMPTS, "parameters": GREEDY}, path)
    assert r.status_code == 200
    outputs = r.json()["outputs"]
    assert len(outputs) == 2 and "Paris" in outputs[0] and "Berlin" in outputs[1]
    check(base_url, "PredictResponse", r.json())
    # one at a time gives the same answers as the batch
    alone = [_predict(base_url, {"inputs": [p], "parameters": GREEDY}).json()["outputs"][0] for p in PROMPTS]
    assert alone == outputs


def test_defaults_sample_and_seed_reproduces(base_url: str) -> None:
    body = {"inputs": PROMPTS[:1], "parameters": {"max_new_tokens": 12, "seed": 11}}
    a, b = (_predict(base_url, body).json()["outputs"][0] for _ in range(2))
    assert a == b
    other = [_predict(base_url, {"inputs": PROMPTS[:1], "parameters": {"max_new_tokens": 12, "seed": s}})
             .json()["outputs"][0] for s in (12, 13, 14)]
    assert len({a, *other}) > 1  # temperature 0.8 by default: seeds matter


def test_stop_cuts_output(base_url: str) -> None:
    r = _predict(base_url, {"inputs": PROMPTS, "parameters": {**GREEDY, "stop": ["."]}})
    assert r.json()["outputs"] == [" Paris", " Berlin"]


@pytest.mark.parametrize("path", ["/predict_stream", "/v1/predict_stream"])
def test_predict_stream_is_ndjson(base_url: str, path: str) -> None:
    r = requests.post(base_url + path, json={"inputs": PROMPTS[:1], "parameters": GREEDY}, stream=True,
                      timeout=120)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    chunks = [json.loads(line) for line in lines]  # no `data:` prefix: each line is JSON
    for c in chunks:
        check(base_url, "PredictStreamChunk", c)
    text = "".join(c["outputs"][0] for c in chunks)
    assert text == _predict(base_url, {"inputs": PROMPTS[:1], "parameters": GREEDY}).json()["outputs"][0]


@pytest.mark.parametrize("body,needle", [
    ({"inputs": "not a list"}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"inputs": [1]}, "inputs.0"),
    ({}, "inputs"),
    ({"inputs": ["x"], "parameters": {"bogus": 1}}, "bogus"),
    ({"inputs": ["x"], "parameters": {"temperature": -1}}, "temperature"),
    ({"inputs": ["x"], "parameters": {"max_new_tokens": 100000}}, "context length"),
])
def test_bad_input_is_400_with_error(base_url: str, body: dict, needle: str) -> None:
    for path in ("/predict", "/predict_stream"):
        r = _predict(base_url, body, path)
        assert r.status_code == 400, r.text
        assert needle in r.json()["error"] and r.json()["code"] == 400
        check(base_url, "server__api__mosaic__protocol__ErrorResponse", r.json())


def test_stream_takes_one_input(base_url: str) -> None:
    r = _predict(base_url, {"inputs": PROMPTS, "parameters": GREEDY}, "/predict_stream")
    assert r.status_code == 400 and "inputs" in r.json()["error"] and "at most 1" in r.json()["error"]


def test_not_json_is_400(base_url: str) -> None:
    r = requests.post(base_url + "/predict", data=b"nope", timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]
