"""`/tokenize` and `/detokenize` without a model: bad bodies (400 naming the field, OpenAI shape, as
vLLM's), 503 before the model is loaded, and keys and rate limits like every route."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from server.app import create_app
from server.config import Settings, load_settings
from server.engine.engine import Engine

MSG = [{"role": "user", "content": "hi"}]
KEY = "tok-key-1"


@pytest.fixture(scope="module")
def client() -> FlaskClient:
    return create_app(load_settings({"MODEL_PATH": "/nonexistent"}), load_model=False).test_client()


@pytest.mark.parametrize("path,body,param", [
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "x", "messages": MSG}, "prompt"),
    ("/tokenize", {"prompt": 3}, "prompt"),
    ("/tokenize", {"messages": []}, "messages"),
    ("/tokenize", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ("/tokenize", {"messages": MSG, "continue_final_message": True}, "continue_final_message"),
    ("/tokenize", {"prompt": "x", "add_special_tokens": "yes"}, "add_special_tokens"),
    ("/detokenize", {}, "tokens"),
    ("/detokenize", {"tokens": [1, -2]}, "tokens[1]"),
    ("/detokenize", {"tokens": "1 2"}, "tokens"),
    ("/detokenize", {"tokens": [1.5]}, "tokens[0]"),
])
def test_bad_bodies_are_400_naming_the_field(client: FlaskClient, path: str, body: dict, param: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400, r.get_json()
    err = r.get_json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("path,body", [
    ("/tokenize", {"prompt": "hi"}),
    ("/tokenize", {"messages": MSG, "add_generation_prompt": False, "continue_final_message": True}),
    ("/detokenize", {"tokens": [1, 2]}),
    ("/detokenize", {"tokens": []}),
])
def test_valid_bodies_wait_for_the_model(client: FlaskClient, path: str, body: dict) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "unavailable"


def test_behind_keys_and_rate_limits_like_every_route() -> None:
    settings = Settings(api_keys=(KEY,), rate_limit="2/minute")
    c = create_app(settings, engine=Engine(settings), load_model=False).test_client()
    r = c.post("/tokenize", json={"prompt": "hi"})
    assert r.status_code == 401 and r.get_json()["error"]["type"] == "authentication_error"
    assert c.post("/detokenize", json={"tokens": [1]}).status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    assert c.post("/tokenize", json={"prompt": "hi"}, headers=auth).status_code == 503
    assert c.post("/detokenize", json={"tokens": [1]}, headers=auth).status_code == 503
    r = c.post("/tokenize", json={"prompt": "hi"}, headers=auth)
    assert r.status_code == 429 and r.get_json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["Retry-After"]) >= 1
