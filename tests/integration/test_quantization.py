"""QUANTIZATION=int8 / int4 on the real server with the embedded model: quantized layers in place,
less weight memory, `/chat` and the OpenAI endpoint answer, continuous batching still batches.
QUANTIZATION=fp8 (no CPU kernel) is refused at start with the reason."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch

from tests.support.servers import ServerProcess, start_server

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A wider arrival window, so the concurrent requests below share steps on a busy CPU.
    server = start_server(tmp_path_factory.mktemp(f"q-{request.param}"),
                          {"QUANTIZATION": request.param, "BATCH_WINDOW_MS": "50"})
    server.quantization = request.param  # type: ignore[attr-defined]
    yield server
    server.stop()


def _prom(url: str) -> str:
    return requests.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text


def _value(prom: str, series: str) -> float:
    m = re.search("^" + re.escape(series) + r" ([0-9.e+]+)$", prom, re.M)
    assert m, series
    return float(m.group(1))


def test_quantized_layers_in_place_and_weight_memory_fell(quantized: ServerProcess, base_url: str) -> None:
    q = quantized.quantization  # type: ignore[attr-defined]
    # 30 layers x 7 projections; the embeddings/LM head (tied) stay float32
    assert f"quantization {q} (210 layers)" in quantized.log()
    info = requests.get(quantized.url + "/info", timeout=30).json()
    assert info["quantize"] == q
    assert requests.get(base_url + "/info", timeout=30).json()["quantize"] is None
    full = requests.get(base_url + "/metrics", timeout=30).json()["model_info"]
    mine = requests.get(quantized.url + "/metrics", timeout=30).json()["model_info"]
    assert mine["quantization"] == q and full["quantization"] == "none"
    # float32 535 MB -> linear layers at 1 (int8) or ~0.6 (int4) bytes per weight + the float32 embeddings
    assert full["weight_bytes"] > 500e6
    assert mine["weight_bytes"] < full["weight_bytes"] * (0.45 if q == "int8" else 0.40)
    prom = _prom(quantized.url)
    assert f'inferbox_model_info{{model="smollm2-135m-instruct",quantization="{q}"}} 1.0' in prom
    assert _value(prom, "inferbox_model_weight_bytes") == mine["weight_bytes"]


def test_chat_and_openai_answer(quantized: ServerProcess) -> None:
    r = requests.post(quantized.url + "/chat", json={
        "messages": QUESTION, "generate_kwargs": {"max_new_tokens": 10, "do_sample": False}}, timeout=300)
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["Result"]
    r = requests.post(quantized.url + "/v1/chat/completions", json={
        "model": "m", "messages": QUESTION, "max_tokens": 10, "temperature": 0}, timeout=300)
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_continuous_batching_still_batches(quantized: ServerProcess) -> None:
    before = _prom(quantized.url)
    prompts = [f"Count from {i} to {i + 5}:" for i in range(4)]

    def one(prompt: str) -> int:
        r = requests.post(quantized.url + "/chat", json={
            "prompt": prompt, "generate_kwargs": {"max_new_tokens": 8, "min_new_tokens": 8,
                                                  "do_sample": False}}, timeout=300)
        return r.status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, prompts)) == [200] * 4
    after = _prom(quantized.url)
    batched = _value(after, 'inferbox_engine_path_total{path="batched"}') - _value(
        before, 'inferbox_engine_path_total{path="batched"}')
    steps = _value(after, 'inferbox_engine_steps_total{kind="decode"}') - _value(
        before, 'inferbox_engine_steps_total{kind="decode"}')
    rows = _value(after, 'inferbox_engine_step_rows_total{kind="decode"}') - _value(
        before, 'inferbox_engine_step_rows_total{kind="decode"}')
    assert batched == 4
    assert rows == 4 * 7  # every request decoded 7 tokens after its prefill token ...
    assert steps < rows  # ... in shared steps: more than one row per decode step


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp8 is served on a GPU")
def test_fp8_on_cpu_is_refused_at_start(tmp_path: Path) -> None:
    server = start_server(tmp_path, {"QUANTIZATION": "fp8"}, wait_healthy=False)
    assert server.proc.wait(120) == 1
    assert "refusing to start: fp8 weights have no CPU kernel" in server.log()
