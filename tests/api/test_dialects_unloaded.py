"""Each dialect's error shape and status, and its validation, with no model loaded (fast, no server)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from server.app import create_app
from server.config import load_settings


@pytest.fixture(scope="module")
def client() -> FlaskClient:
    settings = load_settings({"SERVED_MODEL_NAME": "my-model", "MODEL_PATH": "/nonexistent"})
    return create_app(settings, load_model=False).test_client()


def test_served_model_name_is_configurable(client: FlaskClient) -> None:
    body = client.get("/v1/models").get_json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["my-model"]
    assert client.get("/v1/models/my-model").status_code == 200
    missing = client.get("/v1/models/other")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path,body,shape", [
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "openai"),
    ("/v1/completions", {"model": "m", "prompt": "hi"}, "openai"),
    ("/generate", {"inputs": "hi"}, "tgi"),
    ("/generate_stream", {"inputs": "hi"}, "tgi"),
    ("/", {"inputs": "hi"}, "tgi"),
    ("/predict", {"inputs": ["hi"]}, "mosaic"),
    ("/v1/predict_stream", {"inputs": ["hi"]}, "mosaic"),
    ("/chat", {"prompt": "hi"}, "kaito"),
])
def test_not_loaded_is_503_in_each_shape(client: FlaskClient, path: str, body: dict, shape: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    data = r.get_json()
    if shape == "openai":
        assert data["error"]["type"] == "server_error" and "not loaded" in data["error"]["message"]
    elif shape == "tgi":
        assert data == {"error": "the model is not loaded yet", "error_type": "unavailable"}
    elif shape == "mosaic":
        assert data == {"error": "the model is not loaded yet", "code": 503}
    else:
        assert data == {"detail": "the model is not loaded yet"}


@pytest.mark.parametrize("path,body,status,field", [
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400,
     "stream"),
    ("/v1/completions", {"prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "n": 2, "best_of": 1}, 400, "best_of"),
    ("/v1/completions", {"prompt": "x", "best_of": 3, "stream": True}, 400, "best_of"),
    ("/generate", {"inputs": "x", "parameters": {"top_k": 0}}, 422, "top_k"),
    ("/generate", {"parameters": {}}, 422, "inputs"),
    ("/generate", {"inputs": "x", "parameters": {"adapter_id": "a"}}, 503, None),  # readiness first
    ("/predict", {"inputs": "x"}, 400, "inputs"),
])
def test_validation_errors(client: FlaskClient, path: str, body: dict, status: int,
                           field: str | None) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.get_json()
    data = r.get_json()
    if field is None:
        return
    if path.startswith("/v1/c"):
        assert data["error"]["param"].startswith(field)
    else:
        assert field in data["error"]
        if path == "/generate":
            assert data["error_type"] == "validation"


def test_wrong_method_lists_allowed_ones(client: FlaskClient) -> None:
    r = client.get("/generate")
    assert r.status_code == 405 and "POST" in r.headers["Allow"]
