"""The dialect helper: a dialect declared in a few lines answers every error in its own shape (its own
routes and the app-level guard alike), validates bodies with its own status, names engine options as
its clients do, and turns bad messages into a 400 (fast: no model)."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest
from flask import Response, jsonify
from pydantic import BaseModel, ConfigDict

from server.api.common import errors
from server.api.common.dialect import Dialect, bad_request, current_engine, tokenizing
from server.api.common.errors import ApiError
from server.app import create_app
from server.config import Settings
from server.engine.engine import Engine
from server.engine.params import ModelLimits

KEY = "dialect-test-key"


class EchoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str
    options: dict[str, Any] = {}


def _error(exc: ApiError) -> tuple[int, dict[str, Any]]:
    return exc.status, {"oops": exc.message, "kind": exc.kind}


# What a newcomer writes for a fifth dialect: its error shape, its defaults, its routes.
echo = Dialect("echodialect", _error, defaults={"max_new_tokens": 7}, url_prefix="/echo")


@echo.bp.post("/run")
def _run() -> Response:
    body = echo.read(EchoRequest)
    params = echo.params(current_engine(), body.options, prompt_tokens=3)
    return jsonify({"text": body.text, "max_new_tokens": params.max_new_tokens})


@echo.bp.post("/busy")
def _busy() -> Response:
    raise ApiError(503, "busy", kind="overloaded", headers={"Retry-After": "1"})


strict = Dialect("strictdialect", _error, invalid=bad_request, names={}, url_prefix="/strict")


@strict.bp.post("/run")
def _strict_run() -> Response:
    body = strict.read(EchoRequest)
    strict.params(current_engine(), body.options, prompt_tokens=3)
    return jsonify({})


@pytest.fixture(scope="module")
def client():
    settings = Settings(api_keys=(KEY,))
    engine = Engine(settings)
    # what loading the model sets; no model is needed to turn options into parameters
    engine.limits = ModelLimits(context_length=100, eos_token_ids=(2,), pad_token_id=2, vocab_size=1000,
                                generation_defaults={})
    app = create_app(settings, engine=engine, load_model=False)
    app.register_blueprint(echo.bp)
    app.register_blueprint(strict.bp)
    return app.test_client()


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_a_declared_dialect_serves_with_its_defaults(client) -> None:
    r = client.post("/echo/run", json={"text": "hi"}, headers=AUTH)
    assert r.status_code == 200 and r.get_json() == {"text": "hi", "max_new_tokens": 7}
    r = client.post("/echo/run", json={"text": "hi", "options": {"max_new_tokens": 3}}, headers=AUTH)
    assert r.get_json()["max_new_tokens"] == 3


def test_errors_from_its_routes_keep_status_and_headers_in_its_shape(client) -> None:
    r = client.post("/echo/busy", headers=AUTH)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.get_json() == {"oops": "busy", "kind": "overloaded"}


def test_guard_errors_use_its_shape_too(client) -> None:
    r = client.post("/echo/run", json={"text": "hi"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert r.get_json()["kind"] == "authentication_error"
    assert errors.ERROR_RENDERERS["echodialect"] == echo.render


@pytest.mark.parametrize("path,status", [("/echo/run", 422), ("/strict/run", 400)])
def test_invalid_bodies_get_the_dialects_status(client, path: str, status: int) -> None:
    r = client.post(path, json={"text": 5, "extra": 1}, headers=AUTH)
    assert r.status_code == status
    assert "text:" in r.get_json()["oops"] and "extra:" in r.get_json()["oops"]  # every error listed
    r = client.post(path, data="[1]", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON object" in r.get_json()["oops"]
    json_headers = {**AUTH, "Content-Type": "application/json"}
    r = client.post(path, data='{"text": "a\\ud800b"}', headers=json_headers)  # a lone surrogate
    assert r.status_code == 400 and "not valid Unicode" in r.get_json()["oops"]
    r = client.post(path, data='{"text": "\\ud83d\\ude00"}', headers=json_headers)  # a pair: one character
    assert r.status_code == 200


def test_engine_option_names_are_renamed_for_its_clients(client) -> None:
    r = client.post("/echo/run", json={"text": "hi", "options": {"bogus": 1}}, headers=AUTH)
    assert r.status_code == 400
    assert r.get_json()["oops"] == "unknown or unsupported parameters key(s): bogus"
    r = client.post("/strict/run", json={"text": "hi", "options": {"bogus": 1}}, headers=AUTH)
    assert r.get_json()["oops"] == "unknown or unsupported generate_kwargs key(s): bogus"


def test_tokenizing_turns_the_clients_faults_into_400() -> None:
    with pytest.raises(ApiError) as info, tokenizing(param="messages"):
        raise ValueError("this model has no chat template")
    assert (info.value.status, info.value.param) == (400, "messages")
    with pytest.raises(ApiError) as info, tokenizing():
        jinja2.Environment().from_string("{% if %}")
    assert info.value.status == 400 and info.value.message.startswith("chat template failed")
    with pytest.raises(ApiError) as info, tokenizing():
        jinja2.Environment(undefined=jinja2.StrictUndefined).from_string("{{ x.y }}").render()
    assert info.value.status == 400
    with pytest.raises(RuntimeError), tokenizing():  # anything else is the server's fault: not hidden
        raise RuntimeError("bug")
