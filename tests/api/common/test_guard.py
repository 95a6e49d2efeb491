"""The app-level guard in-process (no model): keys, open paths, rate limits, drain gate, dialect shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Blueprint, Response, jsonify

from server.api.common import errors
from server.api.common.api_keys import key_id, match_key, presented_keys
from server.app import create_app
from server.config import ConfigError, Settings, load_settings
from server.engine.engine import Engine

KEYS = ("alpha-key-123", "beta-key-456")


def make_app(**overrides):
    settings = Settings(**{"api_keys": KEYS, **overrides})
    app = create_app(settings, engine=Engine(settings), load_model=False)
    return app


# A stand-in for a dialect added later: its own blueprint and error shape, nothing about keys.
fake = Blueprint("fakedialect", __name__)


@fake.post("/fake/generate")
def _fake_generate() -> Response:
    return jsonify({"ok": True})


@fake.post("/fake/busy")
def _fake_busy() -> Response:
    raise errors.ApiError(503, "busy", kind="overloaded", headers={"Retry-After": "1"})


def _fake_render(exc: errors.ApiError) -> Response:
    resp = jsonify({"error": {"message": exc.message, "type": exc.kind}})
    resp.status_code = exc.status
    resp.headers.update(exc.headers)
    return resp


errors.register_renderer(fake.name, _fake_render)


@pytest.fixture()
def client():
    app = make_app()
    app.register_blueprint(fake)
    return app.test_client()


def test_presented_keys_reads_every_header_form() -> None:
    assert "k" in presented_keys({"Authorization": "Bearer k"})
    assert "k" in presented_keys({"Authorization": "bearer  k"})
    assert presented_keys({"Authorization": "k"}) == ["k"]
    assert presented_keys({"X-Api-Key": "k"}) == ["k"]
    assert presented_keys({}) == []


def test_match_key_is_exact() -> None:
    assert match_key(["alpha-key-123"], KEYS) == "alpha-key-123"
    assert match_key(["alpha-key-12"], KEYS) is None
    assert match_key(["alpha-key-1234"], KEYS) is None
    assert match_key(["nope", "beta-key-456"], KEYS) == "beta-key-456"
    assert key_id("alpha-key-123") != key_id("beta-key-456")
    assert "alpha" not in key_id("alpha-key-123")


def test_missing_and_wrong_key_get_401_in_kaito_shape(client) -> None:
    r = client.post("/chat", json={"prompt": "hi"})
    assert r.status_code == 401
    assert "API key" in r.get_json()["detail"]
    assert r.headers["WWW-Authenticate"] == "Bearer"
    r = client.post("/chat", json={"prompt": "hi"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert r.get_json() == {"detail": "invalid API key"}


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer alpha-key-123"},
    {"Authorization": "alpha-key-123"},  # MosaicML: no scheme
    {"x-api-key": "beta-key-456"},
])
def test_each_header_form_passes(client, headers) -> None:
    # past the guard; the model is not loaded in this test, so the engine answers 503
    r = client.post("/chat", json={"prompt": "hi"}, headers=headers)
    assert r.status_code == 503, r.get_json()
    assert r.get_json()["detail"] == "the model is not loaded yet"


def test_other_dialects_get_401_in_their_own_shape(client) -> None:
    r = client.post("/fake/generate", json={})
    assert r.status_code == 401
    assert r.get_json()["error"]["type"] == "authentication_error"
    ok = client.post("/fake/generate", json={}, headers={"Authorization": "Bearer alpha-key-123"})
    assert ok.status_code == 200


def test_api_errors_render_in_the_dialect_shape_without_a_blueprint_handler(client) -> None:
    r = client.post("/fake/busy", headers={"x-api-key": "alpha-key-123"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.get_json() == {"error": {"message": "busy", "type": "overloaded"}}


def test_open_paths_need_no_key_but_only_for_get(client) -> None:
    assert client.get("/").status_code == 200
    assert client.get("/health").status_code == 503  # open, but the model is not loaded
    assert client.get("/metrics").status_code == 200
    assert client.post("/").status_code == 401  # POST / is TGI's generate, never open
    assert client.post("/health").status_code == 401


def test_metrics_can_require_a_key() -> None:
    c = make_app(metrics_require_key=True).test_client()
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers={"x-api-key": "alpha-key-123"}).status_code == 200
    c = make_app(open_paths=("/health",)).test_client()
    assert c.get("/").status_code == 401


def test_no_keys_means_open_with_a_warning(caplog) -> None:
    with caplog.at_level("WARNING", logger="inferbox.guard"):
        c = make_app(api_keys=()).test_client()
    assert "no API keys configured" in caplog.text
    assert c.post("/chat", json={"prompt": "hi"}).status_code == 503  # not 401


def test_rate_limit_per_key_answers_429_with_retry_after() -> None:
    app = make_app(rate_limit="2/minute")
    app.register_blueprint(fake)
    c = app.test_client()
    a = {"Authorization": "Bearer alpha-key-123"}
    b = {"Authorization": "Bearer beta-key-456"}
    assert c.post("/chat", json={"prompt": "hi"}, headers=a).status_code == 503
    assert c.post("/fake/generate", json={}, headers=a).status_code == 200
    r = c.post("/chat", json={"prompt": "hi"}, headers=a)
    assert r.status_code == 429
    assert "rate limit" in r.get_json()["detail"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    r = c.post("/fake/generate", json={}, headers=a)
    assert r.status_code == 429 and r.get_json()["error"]["type"] == "rate_limit_exceeded"
    assert c.post("/fake/generate", json={}, headers=b).status_code == 200  # another key, own bucket
    for _ in range(5):  # open paths are never limited
        assert c.get("/health").status_code == 503
    # unauthenticated requests are refused before they count against anyone
    for _ in range(3):
        assert c.post("/chat", json={}).status_code == 401


def test_rate_limit_storage_outage_keeps_serving_with_per_process_limits() -> None:
    from tests.support.servers import free_port

    c = make_app(rate_limit="2/minute", rate_limit_storage_uri=f"redis://127.0.0.1:{free_port()}").test_client()
    a = {"x-api-key": "alpha-key-123"}
    statuses = [c.post("/chat", json={"prompt": "hi"}, headers=a).status_code for _ in range(3)]
    assert statuses == [503, 503, 429]


def test_full_queue_sheds_posts_before_parsing(client) -> None:
    from types import SimpleNamespace

    engine = client.application.extensions["inferbox.engine"]
    engine.loop = SimpleNamespace(queue_depth=8, max_queued=8, running=4, alive=True)
    r = client.post("/chat", data=b"not even json", headers={"x-api-key": "alpha-key-123"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "overloaded" in r.get_json()["detail"]
    assert client.post("/fake/generate", json={}, headers={"x-api-key": "alpha-key-123"}).get_json()[
        "error"]["type"] == "overloaded"
    assert client.post("/chat", json={"prompt": "hi"}).status_code == 401  # keys first
    assert client.get("/metrics").status_code == 200
    engine.loop.queue_depth = 7
    r = client.post("/chat", data=b"not even json", headers={"x-api-key": "alpha-key-123"})
    assert r.status_code == 400


def test_draining_refuses_new_work_with_503(client) -> None:
    engine = client.application.extensions["inferbox.engine"]
    engine.draining = True
    r = client.post("/chat", json={"prompt": "hi"}, headers={"x-api-key": "alpha-key-123"})
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1" and r.headers["Connection"] == "close"
    assert "shutting down" in r.get_json()["detail"]
    r = client.post("/fake/generate", json={})
    assert r.status_code == 503 and "shutting down" in r.get_json()["error"]["message"]
    assert client.get("/health").status_code == 503


def test_settings_from_env(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nfile-key-1\n\nfile-key-2  # ci\n")
    s = load_settings({"API_KEYS": "env-key, other", "API_KEYS_FILE": str(keys),
                       "RATE_LIMIT": "10/second;100/minute", "MAX_INPUT_TOKENS": "512",
                       "OPEN_PATHS": "/health", "DRAIN_DELAY_S": "2.5"})
    assert s.api_keys == ("env-key", "other", "file-key-1", "file-key-2")
    assert "env-key" not in repr(s)
    assert s.open_paths == ("/health",)
    assert (s.max_input_tokens, s.drain_delay_s) == (512, 2.5)
    with pytest.raises(ConfigError, match="RATE_LIMIT"):
        load_settings({"RATE_LIMIT": "lots"})
    with pytest.raises(ConfigError, match="API_KEYS_FILE"):
        load_settings({"API_KEYS_FILE": str(tmp_path / "missing")})
