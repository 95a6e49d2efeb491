"""MosaicML model handlers on the real server: a user's class behind /predict and /predict_stream.

The counting handler (tests/kinds/fixtures, no model) shows batching, failures and streaming; the
example handler (examples/handlers, the embedded chat model through plain transformers) is served
from its deployment YAML.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.servers import ROOT, ServerProcess, start_server

pytestmark = pytest.mark.integration

FIXTURES = ROOT / "tests" / "kinds" / "fixtures"
EXAMPLE_YAML = ROOT / "examples" / "handlers" / "deployment.yaml"


@pytest.fixture(scope="module")
def counting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("handler"), {
        "MODEL_HANDLER": "counting_handler:CountingHandler", "MODEL_HANDLER_DIR": str(FIXTURES),
        "MODEL_PARAMETERS": json.dumps({"prefix": "> "}), "BATCH_WINDOW_MS": "300",
        "MAX_CLIENT_BATCH_SIZE": "8"})
    yield srv
    srv.stop()


def _post(url: str, path: str, body: Any, stream: bool = False) -> requests.Response:
    return requests.post(url + path, json=body, timeout=120, stream=stream)


def _concurrently(url: str, bodies: list[dict]) -> list[requests.Response]:
    out: list[requests.Response | None] = [None] * len(bodies)

    def one(i: int) -> None:
        out[i] = _post(url, "/predict", bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]


def test_predict_gets_parameters_and_answers_in_input_order(counting: ServerProcess) -> None:
    r = _post(counting.url, "/v1/predict", {"inputs": ["a", ["x", 1], {"k": "v"}], "parameters": {"t": 1}})
    assert r.status_code == 200
    outs = r.json()["outputs"]
    assert [o["echo"] for o in outs] == ["> a", "> ['x', 1]", "> {'k': 'v'}"]
    assert all(o["parameters"] == {"t": 1} for o in outs) and {o["call"] for o in outs} == {outs[0]["call"]}


def test_concurrent_requests_reach_the_handler_as_one_batch(counting: ServerProcess) -> None:
    rs = _concurrently(counting.url, [{"inputs": [f"r{i}"]} for i in range(6)])
    outs = [r.json()["outputs"][0] for r in rs]
    assert [o["echo"] for o in outs] == [f"> r{i}" for i in range(6)]
    assert len({o["call"] for o in outs}) == 1 and outs[0]["batch"] == 6  # one predict call, counted


@pytest.mark.parametrize("bad, status", [("bad", 400), ("missing", 400), ("boom", 500), ("short", 500)])
def test_handler_errors_fail_the_batch_in_mosaicml_shape(counting: ServerProcess, bad: str,
                                                         status: int) -> None:
    rs = _concurrently(counting.url, [{"inputs": ["fine"]}, {"inputs": [bad]}])
    for r in rs:  # the innocent request shared the failing batch
        assert r.status_code == status and r.json()["code"] == status
    err = rs[1].json()["error"]
    assert "CountingHandler" in err
    if status == 500:
        assert "boom" not in err and "secret" not in err
        assert "boom" not in counting.log() and "secret" not in counting.log()  # nor in the logs
    assert _post(counting.url, "/predict", {"inputs": ["after"]}).json()["outputs"][0]["echo"] == "> after"


def test_predict_stream_sends_each_chunk_as_an_ndjson_line(counting: ServerProcess) -> None:
    r = _post(counting.url, "/predict_stream", {"inputs": ["one two three"]}, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.iter_lines() if x]
    assert lines == [{"outputs": ["one "]}, {"outputs": ["two "]}, {"outputs": ["three "]}]
    r = _post(counting.url, "/v1/predict_stream", {"inputs": ["two then boom"]}, stream=True)
    lines = [json.loads(x) for x in r.iter_lines() if x]
    assert lines[:3] == [{"outputs": ["two "]}, {"outputs": ["then "]}, {"outputs": ["boom "]}]
    assert lines[-1]["code"] == 500 and "CountingHandler" in lines[-1]["error"]
    r = _post(counting.url, "/predict_stream", {"inputs": ["bad"]})
    assert r.status_code == 200 and json.loads(r.text.splitlines()[-1])["code"] == 400


@pytest.mark.parametrize("path, body, words", [
    ("/predict", {"inputs": []}, "at least 1"),
    ("/predict", {"inputs": "not a list"}, "list"),
    ("/predict", {"inputs": ["x"] * 9}, "at most 8"),
    ("/predict_stream", {"inputs": ["a", "b"]}, "exactly 1"),
    ("/predict", {"parameters": {}}, "inputs"),
])
def test_bad_requests(counting: ServerProcess, path: str, body: dict, words: str) -> None:
    r = _post(counting.url, path, body)
    assert r.status_code == 400 and words in r.json()["error"]


@pytest.mark.parametrize("path", ["/chat", "/generate", "/v1/completions", "/v1/embeddings", "/embed"])
def test_other_endpoints_refuse_a_handler(counting: ServerProcess, path: str) -> None:
    body = {"prompt": "x", "inputs": "x", "input": "x", "model": "m"}
    r = _post(counting.url, path, body)
    assert r.status_code == 400 and "handler" in r.text


def test_models_and_info_name_the_handler(counting: ServerProcess) -> None:
    assert requests.get(counting.url + "/v1/models", timeout=30).json()["data"][0]["type"] == "handler"
    info = requests.get(counting.url + "/info", timeout=30).json()
    assert info["model_type"] == {"handler": {"class": "counting_handler.CountingHandler"}}
    assert requests.get(counting.url + "/metrics", timeout=30).json()["model_info"]["weight_bytes"] == 0
    prom = requests.get(counting.url + "/metrics", headers={"Accept": "text/plain"}, timeout=30)
    assert prom.status_code == 200 and "inferbox_model_weight_bytes 0.0" in prom.text


def test_a_handler_that_does_not_exist_fails_at_start(tmp_path) -> None:
    env = {"MODEL_HANDLER": "no_such_package.handlers:Missing", "PORT": "0"}
    proc = subprocess.run([sys.executable, "-m", "server"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})
    assert proc.returncode != 0
    assert ("MODEL_HANDLER='no_such_package.handlers:Missing': cannot import 'no_such_package.handlers'"
            in proc.stderr)


def test_example_handler_from_its_deployment_yaml(tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = start_server(tmp_path_factory.mktemp("example"), {
        "DEPLOYMENT_YAML": str(EXAMPLE_YAML), "MODEL_PATH": "", "BATCH_WINDOW_MS": "500"})
    try:
        prompts = ["The capital of France is", "The capital of Germany is", "One, two, three,"]
        body = {"parameters": {"max_new_tokens": 6}}
        rs = _concurrently(srv.url, [{"inputs": [p], **body} for p in prompts])
        outs = [r.json()["outputs"][0] for r in rs]
        assert "Paris" in outs[0] and "Berlin" in outs[1] and all(outs)
        text = requests.get(srv.url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
        assert 'inferbox_engine_steps_total{kind="predict"} 1.0' in text  # the three in one call
        assert 'inferbox_engine_step_rows_total{kind="predict"} 3.0' in text
        r = _post(srv.url, "/predict_stream", {"inputs": [prompts[0]], **body}, stream=True)
        chunks = [json.loads(x)["outputs"][0] for x in r.iter_lines() if x]
        alone = _post(srv.url, "/predict", {"inputs": [prompts[0]], **body}).json()["outputs"][0]
        assert len(chunks) >= 2 and "".join(chunks) == alone
        r = _post(srv.url, "/predict", {"inputs": [42]})
        assert r.status_code == 400 and "non-empty string" in r.json()["error"]
    finally:
        srv.stop()


def test_rate_limit_applies_per_client_in_mosaicml_shape(tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = start_server(tmp_path_factory.mktemp("limited"), {
        "MODEL_HANDLER": "counting_handler:CountingHandler", "MODEL_HANDLER_DIR": str(FIXTURES),
        "RATE_LIMIT": "2/minute"})
    try:
        assert [_post(srv.url, "/predict", {"inputs": ["x"]}).status_code for _ in range(2)] == [200, 200]
        r = _post(srv.url, "/predict", {"inputs": ["x"]})
        assert r.status_code == 429 and r.json()["code"] == 429 and int(r.headers["Retry-After"]) >= 1
    finally:
        srv.stop()


def test_sigterm_drains_a_batch_in_flight(tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = start_server(tmp_path_factory.mktemp("drain"), {
        "MODEL_HANDLER": "counting_handler:CountingHandler", "MODEL_HANDLER_DIR": str(FIXTURES),
        "MODEL_PARAMETERS": json.dumps({"delay_s": 3.0}), "DRAIN_DELAY_S": "1"})
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(r=_post(srv.url, "/predict", {"inputs": ["slow"]})))
    t.start()
    time.sleep(1.0)  # the slow batch is running
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert requests.get(srv.url + "/health", timeout=10).status_code == 503
    assert _post(srv.url, "/predict", {"inputs": ["late"]}).status_code == 503
    t.join(60)
    assert result["r"].status_code == 200 and result["r"].json()["outputs"][0]["echo"] == "slow"
    assert srv.proc.wait(60) == 0
