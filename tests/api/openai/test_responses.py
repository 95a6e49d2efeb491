"""`POST /v1/responses` without a model: what it refuses (a 400 naming the field, in the OpenAI error
shape) and how it reports bad bodies. tests/integration/test_responses_api.py runs it on the model."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from server.app import create_app
from server.config import load_settings

MSG = {"role": "user", "content": "hi"}


@pytest.fixture(scope="module")
def client() -> FlaskClient:
    return create_app(load_settings({"MODEL_PATH": "/nonexistent"}), load_model=False).test_client()


@pytest.mark.parametrize("extra,param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "objekt"}}]}, "tools[0].parameters"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "x"}]}, "tools[0].parameters"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": "required",
      "text": {"format": {"type": "json_object"}}}, "tool_choice"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"background": True}, "background"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "objekt"}}}},
     "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"},
                                             {"type": "input_image", "image_url": "data:,"}]}]},
     "input[0].content[1]"),
    ({"input": [MSG, {"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[1].content[0]"),
    ({"input": [MSG, {"type": "reasoning", "summary": []}]}, "input[1]"),
    ({"input": [MSG, {"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[1].call_id"),
    ({"input": [MSG, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c",
                 "output": [{"type": "input_image", "image_url": "data:,"}]}]}, "input[2].output[0]"),
])
def test_unsupported_features_are_400_naming_the_field(client: FlaskClient, extra: dict, param: str) -> None:
    r = client.post("/v1/responses", json={"model": "m", "input": "hi", **extra})
    assert r.status_code == 400, r.get_json()
    err = r.get_json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert param.split("[")[0].split(".")[0] in err["message"]


@pytest.mark.parametrize("body,param", [
    ({}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": "hi", "temperature": 3}, "temperature"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "stream": "yes"}, "stream"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"input": [{"role": "user", "content": [{"type": "video"}]}]}, "input[0].content[0]"),
    ({"input": "hi", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
])
def test_bad_bodies_are_400_with_the_field(client: FlaskClient, body: dict, param: str) -> None:
    r = client.post("/v1/responses", json=body)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["param"] == param


def test_not_json_is_400(client: FlaskClient) -> None:
    r = client.post("/v1/responses", data="{", content_type="application/json")
    assert r.status_code == 400 and "error" in r.get_json()


@pytest.mark.parametrize("body", [
    {"input": "hi"},
    {"input": [MSG,
               {"role": "assistant", "content": [{"type": "output_text", "text": "x", "annotations": []}]},
               {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "y"}]}],
     "instructions": "be brief", "store": True, "tool_choice": "auto", "tools": [], "truncation": "auto",
     "text": {"format": {"type": "text"}}, "reasoning": {"effort": None}, "include": [],
     "metadata": {"a": "b"}},
    {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "strict": True,
                                        "schema": {"type": "object", "properties": {}}}}},
    {"input": "hi", "text": {"format": {"type": "json_object"}}},
    {"input": [MSG, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}", "id": "fc_1",
                     "status": "completed"},
               {"type": "function_call_output", "call_id": "c", "output": "sunny"}],
     "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}},
                "strict": True}], "tool_choice": {"type": "function", "name": "f"}},
])
def test_supported_bodies_reach_the_engine(client: FlaskClient, body: dict) -> None:
    r = client.post("/v1/responses", json=body)  # valid: the only thing missing is the model
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.get_json()["error"]["code"] == "unavailable"
