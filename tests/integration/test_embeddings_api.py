"""The embedding kind on the real server (all-MiniLM-L6-v2 from its PyPI package), through the real
clients: `openai` (float and base64), `mcli.predict` with instructor pairs, and `curl` to `/embed`.

Every vector is compared with sentence-transformers' in-process `encode` on the same model and
inputs (cosine >= 0.99999). The server pools instructor-style (POOLING_INCLUDE_PROMPT=false) and
requires a key, so the MosaicML `Authorization: <key>` and OpenAI `Bearer` forms are both in play.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import run_client
from tests.support.servers import ROOT, ServerProcess, start_server

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = ROOT / "models" / "all-minilm-l6-v2"
KEY = "test-key"  # what tests/integration/test_real_clients.py gives mcli as MOSAICML_API_KEY
AUTH = {"Authorization": KEY}
INSTRUCTION = "Represent the Science title:"
TITLES = ["3D ActionSLAM: wearable person tracking in multi-floor environments",
          "The capital of France is Paris."]
SENTENCES = [f"Sentence number {i} is about {topic}." for i, topic in enumerate(
    ["cats", "the weather in Lisbon", "quantum computing", "a long walk", "bread", "rivers", "music",
     "graph theory", "tea", "the moon", "football", "origami", "volcanoes", "jazz", "trains", "salt"])]


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not (MODEL / "modules.json").is_file():
        pytest.fail(f"{MODEL} is missing: run `make embed-model` (make test does)")
    srv = start_server(tmp_path_factory.mktemp("embed"), {
        "PRESET": "all-minilm-l6-v2", "MODEL_PATH": str(MODEL), "POOLING_INCLUDE_PROMPT": "false",
        "API_KEYS": KEY, "BATCH_WINDOW_MS": "20", "MAX_CLIENT_BATCH_SIZE": "16"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def url(embed_server: ServerProcess) -> str:
    return embed_server.url


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODEL), device="cpu", local_files_only=True)
    model.set_pooling_include_prompt(False)  # as the server was told
    return model


def _cos(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _post(url: str, path: str, body: Any) -> requests.Response:
    return requests.post(url + path, json=body, headers=AUTH, timeout=120)


def test_openai_client_float_and_base64(url: str, reference) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    ref = reference.encode(SENTENCES[:4])
    got = client.embeddings.create(model="anything", input=SENTENCES[:4], encoding_format="float")
    assert [d.index for d in got.data] == [0, 1, 2, 3] and got.model == "all-minilm-l6-v2"
    assert (_cos([d.embedding for d in got.data], ref) >= 0.99999).all()
    assert got.usage.prompt_tokens == got.usage.total_tokens == sum(
        len(reference.tokenizer(s)["input_ids"]) for s in SENTENCES[:4])
    b64 = client.embeddings.create(model="m", input=SENTENCES[0], encoding_format="base64")
    assert isinstance(b64.data[0].embedding, str)  # the SDK hands base64 through as it came
    vec = np.frombuffer(__import__("base64").b64decode(b64.data[0].embedding), dtype="<f4")
    assert vec.shape == (384,) and _cos(vec, ref[0]) >= 0.99999
    default = client.embeddings.create(model="m", input=SENTENCES[1])  # the SDK asks for base64 itself
    assert _cos(default.data[0].embedding, ref[1]) >= 0.99999
    ids = reference.tokenizer(SENTENCES[2])["input_ids"]
    by_ids = client.embeddings.create(model="m", input=[ids], encoding_format="float")
    assert _cos(by_ids.data[0].embedding, ref[2]) >= 0.99999


def test_concurrent_requests_equal_encode_and_share_forward_passes(url: str, reference) -> None:
    before = _steps(url)
    results: dict[int, list[float]] = {}

    def one(i: int) -> None:
        r = _post(url, "/v1/embeddings", {"input": SENTENCES[i], "model": "m"})
        results[i] = r.json()["data"][0]["embedding"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(SENTENCES))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(len(SENTENCES)))
    ref = reference.encode(SENTENCES)
    assert (_cos([results[i] for i in range(len(SENTENCES))], ref) >= 0.99999).all()
    calls, rows = (a - b for a, b in zip(_steps(url), before, strict=True))
    assert rows == len(SENTENCES) and calls < len(SENTENCES)  # batched, not one pass per request


def _steps(url: str) -> tuple[float, float]:
    text = requests.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
    found = {"steps": 0.0, "rows": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("kind") == "predict" and s.name == "inferbox_engine_steps_total":
                found["steps"] = s.value
            if s.labels.get("kind") == "predict" and s.name == "inferbox_engine_step_rows_total":
                found["rows"] = s.value
    return found["steps"], found["rows"]


def test_mcli_predict_with_instructor_pairs(url: str, reference, tmp_path: Path) -> None:
    out = run_client("mcli_embed", url, tmp_path)
    pairs = reference.encode(TITLES, prompt=INSTRUCTION)
    assert (_cos(out["pairs"]["outputs"], pairs) >= 0.99999).all()
    assert (_cos(out["plain"]["outputs"], reference.encode(TITLES)) >= 0.99999).all()
    assert out["bad_pair"]["type"] is not None and "exactly 2" in out["bad_pair"]["message"]


def test_curl_embed(url: str, reference) -> None:
    proc = subprocess.run(["curl", "-s", "-X", "POST", url + "/embed", "-H", f"Authorization: {KEY}",
                           "-H", "Content-Type: application/json",
                           "-d", json.dumps({"inputs": TITLES[1]})],
                          capture_output=True, text=True, timeout=120)
    vectors = json.loads(proc.stdout)
    assert len(vectors) == 1 and abs(np.linalg.norm(vectors[0]) - 1) < 1e-5  # normalize: true
    assert _cos(vectors[0], reference.encode(TITLES[1])) >= 0.99999


def test_models_and_info_say_embedding(url: str) -> None:
    assert requests.get(url + "/v1/models", headers=AUTH, timeout=30).json()["data"][0]["type"] == "embedding"
    info = requests.get(url + "/info", timeout=30).json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["embedding_dimension"] == 384 and info["max_input_length"] == 256
    kaito = requests.get(url + "/metrics", timeout=30).json()["model_info"]  # Kaito's JSON metrics
    assert kaito["dtype"] == "float32" and kaito["weight_bytes"] > 80_000_000


@pytest.mark.parametrize("path, body", [
    ("/chat", {"prompt": "Hi"}),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}),
    ("/v1/completions", {"model": "m", "prompt": "Hi"}),
    ("/generate", {"inputs": "Hi"}),
    ("/generate_stream", {"inputs": "Hi"}),
    ("/", {"inputs": "Hi"}),
    ("/v1/responses", {"model": "m", "input": "Hi"}),
])
def test_generation_endpoints_answer_400(url: str, path: str, body: dict) -> None:
    r = _post(url, path, body)
    assert r.status_code == 400 and "embedding model" in r.text


@pytest.mark.parametrize("path, body", [
    ("/chat", {"prompt": "Hi", "response_format": {"type": "json_object"}}),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "Hi"}],
                              "response_format": {"type": "json_object"}}),
    ("/v1/completions", {"model": "m", "prompt": "Hi", "guided_regex": "[0-9]+"}),
    ("/generate", {"inputs": "Hi", "parameters": {"grammar": {"type": "regex", "value": "[0-9]+"}}}),
    ("/", {"inputs": "Hi", "parameters": {"response_format": {"type": "json_object"}}}),
    ("/v1/responses", {"model": "m", "input": "Hi", "text": {"format": {"type": "json_object"}}}),
    ("/v1/responses", {"model": "m", "input": "Hi", "tool_choice": "required", "tools": [
        {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]}),
    ("/predict", {"inputs": ["Hi"], "parameters": {"response_format": {"type": "json_object"}}}),
])
def test_output_constraints_are_400_on_an_embedding_model(url: str, path: str, body: dict) -> None:
    """Refused in each dialect's shape, never ignored (a vector has no text to constrain)."""
    r = _post(url, path, body)
    assert r.status_code == 400, r.text
    assert "embedding model" in r.text
    if path == "/predict":
        assert r.json()["code"] == 400


LONG = "word " * 300


@pytest.mark.parametrize("path, body, status, words", [
    ("/predict", {"inputs": []}, 400, "at least 1"),
    ("/v1/embeddings", {"input": []}, 400, "empty"),
    ("/embed", {"inputs": []}, 422, "empty"),
    ("/v1/embeddings", {"input": ""}, 400, "empty"),
    ("/predict", {"inputs": [["instruction", "text", "extra"]]}, 400, "exactly 2"),
    ("/predict", {"inputs": [["instruction"]]}, 400, "exactly 2"),
    ("/predict", {"inputs": [3]}, 400, "string"),
    ("/predict", {"inputs": [[1, 2]]}, 400, "two strings"),
    ("/v1/embeddings", {"input": [1.5]}, 400, "input"),
    ("/embed", {"inputs": [3]}, 422, "inputs"),
    ("/predict", {"inputs": ["x"] * 17}, 400, "at most 16"),
    ("/v1/embeddings", {"input": ["x"] * 17}, 400, "at most 16"),
    ("/embed", {"inputs": ["x"] * 17}, 413, "at most 16"),
    ("/predict", {"inputs": [LONG]}, 400, "at most 256"),
    ("/v1/embeddings", {"input": LONG}, 400, "at most 256"),
    ("/embed", {"inputs": LONG}, 413, "at most 256"),
    ("/v1/embeddings", {"input": "x", "dimensions": 64}, 400, "does not support"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ("/predict_stream", {"inputs": ["x"]}, 400, "predict_stream"),
])
def test_bad_input_gets_a_clear_4xx(url: str, path: str, body: dict, status: int, words: str) -> None:
    r = _post(url, path, body)
    assert r.status_code == status, r.text
    assert words in r.text
    if path in ("/predict", "/predict_stream"):
        assert r.json()["code"] == status  # MosaicML's shape
    elif path == "/embed":
        assert r.json()["error_type"] == "Validation"  # TEI's
    else:
        assert r.json()["error"]["type"] == "invalid_request_error"  # OpenAI's


def test_truncate_accepts_a_long_input(url: str) -> None:
    assert _post(url, "/embed", {"inputs": LONG, "truncate": True}).status_code == 200
    assert _post(url, "/predict", {"inputs": [LONG], "parameters": {"truncate": True}}).status_code == 200


def test_keys_are_required_in_each_dialects_shape(url: str) -> None:
    r = requests.post(url + "/predict", json={"inputs": ["x"]}, timeout=30)
    assert r.status_code == 401 and r.json()["code"] == 401
    r = requests.post(url + "/v1/embeddings", json={"input": "x"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = requests.post(url + "/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer wrong"},
                      timeout=30)
    assert r.status_code == 401 and "error_type" in r.json()


@pytest.mark.parametrize("path, body", [("/v1/embeddings", {"input": "x"}), ("/embed", {"inputs": "x"})])
def test_embedding_endpoints_answer_400_on_a_chat_model(base_url: str, path: str, body: dict) -> None:
    r = requests.post(base_url + path, json=body, timeout=30)
    assert r.status_code == 400 and "needs an embedding model" in r.text
