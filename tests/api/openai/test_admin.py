"""The adapter admin endpoints' gate (vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter),
with no model loaded: refused unless ADMIN_API_KEYS is set and the caller presents one (fast)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from server.app import create_app
from server.config import load_settings

BODIES = {"load": {"lora_name": "a", "lora_path": "a"}, "unload": {"lora_name": "a"}}


def _client(**env: str) -> FlaskClient:
    return create_app(load_settings({"MODEL_PATH": "/nonexistent", **env}), load_model=False).test_client()


def _post(client: FlaskClient, op: str, key: str | None = None, body: dict | None = None) -> TestResponse:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(f"/v1/{op}_lora_adapter", json=BODIES[op] if body is None else body, headers=headers)


@pytest.mark.parametrize("op", ["load", "unload"])
def test_disabled_without_admin_keys(op: str) -> None:
    r = _post(_client(), op, key="anything")
    assert r.status_code == 403
    err = r.get_json()["error"]
    assert err["code"] == "admin_disabled" and "ADMIN_API_KEYS" in err["message"]
    assert err["type"] == "permission_error" and err["param"] is None


@pytest.mark.parametrize("op", ["load", "unload"])
def test_missing_or_wrong_key_is_401_and_a_right_one_reaches_the_engine(op: str) -> None:
    client = _client(ADMIN_API_KEYS="k1,k2")
    for key in (None, "wrong", "k1x"):
        r = _post(client, op, key=key)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert r.get_json()["error"]["type"] == "authentication_error"
    r = _post(client, op, key="k2")
    assert r.status_code == 503 and "not loaded" in r.get_json()["error"]["message"]  # past the gate


def test_bodies_are_validated_after_the_gate() -> None:
    client = _client(ADMIN_API_KEYS="k1")
    assert _post(client, "load", body={"lora_name": "a"}).status_code == 401
    r = _post(client, "load", key="k1", body={"lora_name": "a"})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "lora_path"
    r = _post(client, "unload", key="k1", body={"lora_name": ""})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "lora_name"


def test_an_admin_key_passes_the_api_key_check_too() -> None:
    client = _client(API_KEYS="user-key", ADMIN_API_KEYS="admin-key")
    r = _post(client, "load", key="user-key")  # a user key is not an admin key
    assert r.status_code == 401 and "admin key" in r.get_json()["error"]["message"]
    assert _post(client, "load", key="admin-key").status_code == 503
    assert client.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer admin-key"}
                       ).status_code == 503  # an admin key is also an API key
    assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 401
