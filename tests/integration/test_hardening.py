"""The real server with keys and tight limits: 401/200 per endpoint, 413/400 limits as JSON, 96
concurrent long requests against a queue of 8, Prometheus series, and a marker prompt that must
appear in no log line (LOG_LEVEL=debug; stdout and stderr of gunicorn and the worker)."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.support.servers import API_KEY, KEYED_LIMITS, ServerProcess

pytestmark = pytest.mark.integration

KEY = API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
MARKER = "zqxmarker" + uuid.uuid4().hex[:12]
QUEUE = KEYED_LIMITS["MAX_QUEUED_REQUESTS"]
BATCH = KEYED_LIMITS["MAX_BATCH_SIZE"]


@pytest.fixture(scope="module")
def hard(keyed_server: ServerProcess) -> ServerProcess:
    return keyed_server


# Every generation endpoint of every dialect with a minimal valid body. Dialects not merged into
# this build answer 404 with a key and are skipped; without a key everything answers 401.
ENDPOINTS = [
    ("/chat", {"prompt": "Hello", "generate_kwargs": {"max_new_tokens": 2}}),
    ("/v1/chat/completions",
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    ("/v1/completions", {"model": "m", "prompt": "Hello", "max_tokens": 2}),
    ("/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}),
    ("/generate_stream", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}),
    ("/", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}),
    ("/predict", {"inputs": ["Hello"], "parameters": {"max_new_tokens": 2}}),
    ("/predict_stream", {"inputs": ["Hello"], "parameters": {"max_new_tokens": 2}}),
    ("/v1/predict", {"inputs": ["Hello"], "parameters": {"max_new_tokens": 2}}),
    ("/v1/predict_stream", {"inputs": ["Hello"], "parameters": {"max_new_tokens": 2}}),
    ("/v1/responses", {"model": "m", "input": "Hi", "max_output_tokens": 2}),
    ("/tokenize", {"prompt": "Hello"}),
    ("/detokenize", {"tokens": [1, 2]}),
]


@pytest.mark.parametrize(("path", "body"), ENDPOINTS, ids=[p for p, _ in ENDPOINTS])
def test_generation_endpoints_need_a_key(hard: ServerProcess, path: str, body: dict) -> None:
    r = requests.post(hard.url + path, json=body, timeout=30)
    assert r.status_code == 401, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()  # the dialect's error shape: never empty, never HTML
    r = requests.post(hard.url + path, json=body, headers={"x-api-key": "wrong"}, timeout=30)
    assert r.status_code == 401
    ok = requests.post(hard.url + path, json=body, headers=AUTH, timeout=120)
    if ok.status_code in (404, 405) and path != "/chat":
        pytest.skip(f"{path} is not served by this build")
    assert ok.status_code == 200, ok.text
    bare = requests.post(hard.url + path, json=body, headers={"Authorization": "second-key"}, timeout=120)
    assert bare.status_code == 200, bare.text  # MosaicML's bare `Authorization: <key>`


def test_open_paths(hard: ServerProcess) -> None:
    assert requests.get(hard.url + "/health", timeout=10).status_code == 200
    assert requests.get(hard.url + "/", timeout=10).status_code == 200
    assert requests.get(hard.url + "/metrics", timeout=10).status_code == 200


def test_oversize_bodies_get_413_json_with_and_without_content_length(hard: ServerProcess) -> None:
    big = json.dumps({"prompt": "x " * 10_000}).encode()
    r = requests.post(hard.url + "/chat", data=big, headers={**AUTH, "Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 413 and "larger than 8192" in r.json()["detail"]

    def chunks():
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    r = requests.post(hard.url + "/chat", data=chunks(), headers=AUTH, timeout=30)  # chunked
    assert r.status_code == 413, r.text
    assert "larger than 8192" in r.json()["detail"]
    small = json.dumps({"prompt": "Hi", "generate_kwargs": {"max_new_tokens": 1}}).encode()
    r = requests.post(hard.url + "/chat", data=iter([small]), headers=AUTH, timeout=60)  # chunked, small
    assert r.status_code == 200, r.text


def test_prompt_over_max_input_tokens_is_400(hard: ServerProcess) -> None:
    r = requests.post(hard.url + "/chat", json={"prompt": "word " * 300}, headers=AUTH, timeout=30)
    assert r.status_code == 400
    assert "MAX_INPUT_TOKENS" in r.json()["detail"]


def _worker(srv: ServerProcess) -> psutil.Process:
    children = psutil.Process(srv.proc.pid).children()
    assert len(children) == 1, children
    return children[0]


def test_96_concurrent_long_requests_against_a_queue_of_8(hard: ServerProcess) -> None:
    worker = _worker(hard)
    body = {"prompt": "Tell me a long story.",
            "generate_kwargs": {"max_new_tokens": 12, "min_new_tokens": 12}}
    requests.post(hard.url + "/chat", json=body, headers=AUTH, timeout=120).raise_for_status()  # warm
    idle_rss = worker.memory_info().rss

    def one(_: int) -> tuple[int, float, str, dict]:
        t0 = time.monotonic()
        try:
            r = requests.post(hard.url + "/chat", json=body, headers=AUTH, timeout=300)
        except requests.RequestException as exc:  # a hang or reset is a failure, reported as such
            return -1, time.monotonic() - t0, type(exc).__name__, {}
        return r.status_code, time.monotonic() - t0, r.headers.get("Retry-After", ""), r.json()

    with ThreadPoolExecutor(96) as pool:
        results = list(pool.map(one, range(96)))
    statuses = [s for s, *_ in results]
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses.count(200) >= BATCH  # the running batch and the queue are served
    assert statuses.count(503) >= 96 - 64  # the rest is refused, not queued without bound
    for status, _, retry_after, payload in results:
        if status == 503:
            assert retry_after and "overloaded" in payload["detail"]
        if status == 200:
            assert payload["Result"]
    assert requests.get(hard.url + "/health", timeout=10).status_code == 200
    after = requests.post(hard.url + "/chat", json=body, headers=AUTH, timeout=120)
    assert after.status_code == 200  # still serving

    time.sleep(1)
    rss = worker.memory_info().rss
    counts = ", ".join(f"{s}={statuses.count(s)}" for s in sorted(set(statuses)))
    print(f"worker RSS idle {idle_rss / 2**20:.0f} MiB, after burst {rss / 2**20:.0f} MiB; statuses {counts}")
    assert rss < idle_rss * 1.25 + 150 * 2**20, (idle_rss, rss)


def test_prometheus_series(hard: ServerProcess) -> None:
    # this test's own traffic: a refused and a served /chat (whatever other tests did or did not run)
    body = {"prompt": "Hello", "generate_kwargs": {"max_new_tokens": 2}}
    assert requests.post(hard.url + "/chat", json=body, timeout=30).status_code == 401
    assert requests.post(hard.url + "/chat", json=body, headers=AUTH, timeout=120).status_code == 200
    text = requests.get(hard.url + "/metrics", headers={"Accept": "text/plain"}, timeout=10).text
    for series in ('inferbox_requests_total{adapter="-",endpoint="/chat",status="401"}',
                   'inferbox_requests_total{adapter="base",endpoint="/chat",status="200"}',
                   "inferbox_queue_depth", "inferbox_running_batch_size", "inferbox_prompt_tokens_total",
                   "inferbox_generated_tokens_total", "inferbox_time_to_first_token_seconds_count",
                   "inferbox_request_latency_seconds_bucket", 'inferbox_engine_path_total{path="exact"}',
                   "inferbox_inflight_requests", "inferbox_draining 0.0"):
        assert series in text, series
    ttft = [ln for ln in text.splitlines() if ln.startswith("inferbox_time_to_first_token_seconds_count")]
    assert float(ttft[0].split()[-1]) > 0


def test_marker_prompt_appears_in_no_log_line(hard: ServerProcess) -> None:
    texts = []
    r = requests.post(hard.url + "/chat", headers=AUTH, timeout=120, json={
        "prompt": f"Repeat after me: {MARKER} {MARKER}", "return_full_text": False,
        "generate_kwargs": {"max_new_tokens": 12, "do_sample": False}})
    assert r.status_code == 200
    texts.append(r.json()["Result"])
    r = requests.post(hard.url + "/chat", headers=AUTH, timeout=120, json={
        "messages": [{"role": "user", "content": f"Say {MARKER}"}], "stream": True,
        "generate_kwargs": {"max_new_tokens": 12, "do_sample": False}})
    assert r.status_code == 200
    texts.append("".join(json.loads(ln[6:]).get("text", "") for ln in r.text.splitlines()
                         if ln.startswith("data: {")))
    # bad and refused requests carrying the marker
    for body, headers in (({"prompt": MARKER, "generate_kwargs": {MARKER: 1}}, AUTH),
                          ({"prompt": MARKER, "generate_kwargs": {"temperature": MARKER}}, AUTH),
                          ({"messages": [{"role": MARKER, "content": MARKER}]}, AUTH),
                          ({"prompt": MARKER}, {"x-api-key": MARKER}),
                          ({"prompt": f"{MARKER} " * 300}, AUTH)):
        assert requests.post(hard.url + "/chat", json=body, headers=headers, timeout=60).status_code < 500
    requests.post(hard.url + "/chat", data=f'{{"prompt": "{MARKER}', headers=AUTH, timeout=60)
    time.sleep(1.5)
    log = hard.log()
    assert "request_id=" in log and "prompt_tokens=" in log and "completion_tokens=" in log
    assert "DEBUG" in log  # debug logging really was on
    leaks = [ln for ln in log.splitlines() if MARKER in ln]
    assert not leaks, leaks[:5]
    for text in texts:  # the generated text, where it is distinctive enough to search for
        text = text.strip()
        if len(text) >= 16:
            assert text not in log, text
    assert KEY not in log
