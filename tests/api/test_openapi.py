"""/openapi.json: a valid OpenAPI 3.1 document covering every route, whose request schemas accept and
reject exactly what the handlers' models do (it feeds schemathesis)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel, ValidationError

from server.api import openapi
from server.api.kaito import protocol as kaito_protocol
from server.api.mosaic import protocol as mosaic_protocol
from server.api.openai import protocol as openai_protocol
from server.api.openai import responses_protocol, tokenize_protocol
from server.api.tgi import protocol as tgi_protocol
from server.app import create_app
from server.config import load_settings

DOC = openapi.document()


def test_document_is_valid_openapi() -> None:
    assert DOC["openapi"].startswith("3.1")
    validate(DOC)


def test_every_route_is_documented() -> None:
    app = create_app(load_settings({"MODEL_PATH": "/nonexistent"}), load_model=False)
    client = app.test_client()
    assert client.get("/openapi.json").get_json() == DOC
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<path:model_id>", "{model_id}")
        assert path in DOC["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in DOC["paths"][path], (method, path)


def _schema_accepts(model: type[BaseModel], body: Any) -> bool:
    path = {kaito_protocol.ChatRequest: "/chat",
            openai_protocol.ChatCompletionRequest: "/v1/chat/completions",
            openai_protocol.CompletionRequest: "/v1/completions", tgi_protocol.GenerateRequest: "/generate",
            tgi_protocol.CompatRequest: "/", mosaic_protocol.PredictRequest: "/predict",
            mosaic_protocol.PredictStreamRequest: "/predict_stream",
            responses_protocol.ResponsesRequest: "/v1/responses",
            tokenize_protocol.TokenizeRequest: "/tokenize",
            tokenize_protocol.DetokenizeRequest: "/detokenize"}[model]
    ref = DOC["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = {**ref, "components": DOC["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(body)


def _model_accepts(model: type[BaseModel], body: Any) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


MSG = [{"role": "user", "content": "hi"}]
CASES: list[tuple[type[BaseModel], Any]] = [
    (openai_protocol.ChatCompletionRequest, {"model": "m", "messages": MSG}),
    (openai_protocol.ChatCompletionRequest, {"messages": MSG, "stop": "x", "n": 2, "seed": -5,
                                             "logprobs": True, "top_logprobs": 3, "stream": True,
                                             "stream_options": {"include_usage": True}}),
    (openai_protocol.ChatCompletionRequest, {"messages": [{"role": "user", "content": [{"type": "text",
                                                                                      "text": "a"}]}]}),
    (openai_protocol.ChatCompletionRequest, {"messages": []}),
    (openai_protocol.ChatCompletionRequest, {"messages": MSG, "n": 0}),
    (openai_protocol.ChatCompletionRequest, {"messages": MSG, "n": 1.5}),
    (openai_protocol.ChatCompletionRequest, {"messages": MSG, "temperature": 2.5}),
    (openai_protocol.ChatCompletionRequest, {"messages": MSG, "stop": [""]}),
    (openai_protocol.ChatCompletionRequest, {"messages": MSG, "stream": "true"}),
    (openai_protocol.ChatCompletionRequest, {"messages": [{"role": "robot", "content": "x"}]}),
    (openai_protocol.CompletionRequest, {"prompt": "x", "echo": True, "logprobs": 2, "best_of": 2}),
    (openai_protocol.CompletionRequest, {"prompt": [1, 2, 3]}),
    (openai_protocol.CompletionRequest, {"prompt": [[1, 2], [3]]}),
    (openai_protocol.CompletionRequest, {"prompt": ["a", "b"], "max_tokens": 3}),
    (openai_protocol.CompletionRequest, {"prompt": "x", "logprobs": 6}),
    (openai_protocol.CompletionRequest, {"prompt": 5}),
    (openai_protocol.CompletionRequest, {}),
    (openai_protocol.CompletionRequest, {"prompt": ""}),
    (openai_protocol.CompletionRequest, {"prompt": []}),
    (openai_protocol.CompletionRequest, {"prompt": [[]]}),
    (openai_protocol.CompletionRequest, {"prompt": ["a", ""]}),
    (openai_protocol.CompletionRequest, {"prompt": "x", "temperature": "0.5"}),
    (openai_protocol.CompletionRequest, {"prompt": "x", "temperature": True}),
    (openai_protocol.CompletionRequest, {"prompt": "x", "temperature": 1}),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"best_of": 2, "do_sample": True,
                                                                  "stop": ["a"], "top_p": 0.5}}),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": None}),
    (tgi_protocol.GenerateRequest, {"inputs": ""}),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"top_p": 1.0}}),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"temperature": 0}}),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"stop": [""]}}),
    (tgi_protocol.CompatRequest, {"inputs": "x", "stream": True}),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"repetition_penalty": "1.2"}}),
    (tgi_protocol.GenerateRequest, {"inputs": 3}),
    (tgi_protocol.CompatRequest, {"inputs": "x", "stream": 1}),
    (mosaic_protocol.PredictRequest, {"inputs": ["a", "b"], "parameters": {"temperature": 0}}),
    (mosaic_protocol.PredictRequest, {"inputs": []}),
    (mosaic_protocol.PredictRequest, {"inputs": "a"}),
    (mosaic_protocol.PredictRequest, {"inputs": [""]}),
    (mosaic_protocol.PredictStreamRequest, {"inputs": ["a"]}),
    (mosaic_protocol.PredictStreamRequest, {"inputs": ["a", "b"]}),
    (kaito_protocol.ChatRequest, {"prompt": "x", "generate_kwargs": {"max_new_tokens": 3}}),
    (kaito_protocol.ChatRequest, {"messages": MSG, "return_full_text": "no"}),
    (kaito_protocol.ChatRequest, {"messages": []}),
    (responses_protocol.ResponsesRequest, {"input": "hi"}),
    (responses_protocol.ResponsesRequest, {"input": [{"role": "user", "content": "hi"}], "instructions": "x",
                                           "max_output_tokens": 5, "temperature": 0, "top_p": 1,
                                           "stream": True, "metadata": {"k": "v"}}),
    (responses_protocol.ResponsesRequest, {"input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "b", "annotations": []}]}]}),
    (responses_protocol.ResponsesRequest, {"input": ""}),
    (responses_protocol.ResponsesRequest, {"input": []}),
    (responses_protocol.ResponsesRequest, {}),
    (responses_protocol.ResponsesRequest, {"input": "x", "temperature": 3}),
    (responses_protocol.ResponsesRequest, {"input": "x", "max_output_tokens": 0}),
    (responses_protocol.ResponsesRequest, {"input": [{"role": "robot", "content": "x"}]}),
    (responses_protocol.ResponsesRequest, {"input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
    (tokenize_protocol.TokenizeRequest, {"prompt": "x", "add_special_tokens": False,
                                         "return_token_strs": True}),
    (tokenize_protocol.TokenizeRequest, {"messages": MSG, "add_generation_prompt": False}),
    (tokenize_protocol.TokenizeRequest, {"prompt": 3}),
    (tokenize_protocol.TokenizeRequest, {"messages": []}),
    (tokenize_protocol.DetokenizeRequest, {"tokens": [1, 2]}),
    (tokenize_protocol.DetokenizeRequest, {"tokens": []}),
    (tokenize_protocol.DetokenizeRequest, {"tokens": [-1]}),
    (tokenize_protocol.DetokenizeRequest, {"tokens": [1.5]}),
    (tokenize_protocol.DetokenizeRequest, {}),
]


@pytest.mark.parametrize("body,ok", [
    ({"prompt": "x"}, True),
    ({"messages": MSG}, True),
    ({"prompt": "x", "messages": MSG}, False),
    ({"prompt": None, "messages": None}, False),
    ({}, False),
])
def test_kaito_schema_needs_exactly_one_of_prompt_and_messages(body: dict, ok: bool) -> None:
    assert _schema_accepts(kaito_protocol.ChatRequest, body) is ok


@pytest.mark.parametrize("model,body", CASES)
def test_request_schema_matches_model(model: type[BaseModel], body: Any) -> None:
    assert _schema_accepts(model, body) == _model_accepts(model, body), body


@pytest.mark.parametrize("kwargs,ok", [
    ({"max_new_tokens": 3, "do_sample": True, "num_beams": 2, "watermarking_config": {"bias": 2.0}}, True),
    ({"bogus_key": 1}, False),
    ({"max_new_tokens": "3"}, False),
    ({"top_p": 1.5}, False),
])
def test_generate_kwargs_schema_lists_accepted_keys(kwargs: dict, ok: bool) -> None:
    assert _schema_accepts(kaito_protocol.ChatRequest, {"prompt": "x", "generate_kwargs": kwargs}) is ok
    assert _schema_accepts(mosaic_protocol.PredictRequest, {"inputs": ["x"], "parameters": kwargs}) is ok


PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
CALL = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}


@pytest.mark.parametrize("model,body", [
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"grammar": {"type": "json",
                                                                              "value": PERSON}}}),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"grammar": {"type": "regex",
                                                                              "value": "a+"}}}),
    (tgi_protocol.CompatRequest, {"inputs": "x", "parameters": {"response_format": {"type": "json_object",
                                                                                   "schema": PERSON}}}),
    (kaito_protocol.ChatRequest, {"prompt": "x", "response_format": {"type": "json_object"}}),
    (responses_protocol.ResponsesRequest, {"input": "x", "text": {"format": {
        "type": "json_schema", "name": "p", "schema": PERSON, "strict": True}}}),
    (responses_protocol.ResponsesRequest, {"input": "x", "tools": [{"type": "function", "name": "f",
                                                                    "parameters": PERSON, "strict": True}],
                                           "tool_choice": {"type": "function", "name": "f"}}),
    (responses_protocol.ResponsesRequest, {"input": [{"role": "user", "content": "x"}, CALL, {
        "type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "ok"}]}]}),
])
def test_structured_fields_are_in_the_schema(model: type[BaseModel], body: dict) -> None:
    assert _model_accepts(model, body) and _schema_accepts(model, body)


MERGE = {"ids": ["a", "b"], "weights": [0.5, 0.5], "merge_strategy": "ties", "density": 0.5,
         "majority_sign_method": "total"}


@pytest.mark.parametrize("model,body,ok", [
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"adapter_id": "a", "adapter_source": "hub",
                                                                  "api_token": "t"}}, True),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"merged_adapters": MERGE}}, True),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"merged_adapters": {}}}, False),
    (tgi_protocol.GenerateRequest, {"inputs": "x",
                                    "parameters": {"merged_adapters": {**MERGE, "density": 2}}}, False),
    (kaito_protocol.ChatRequest, {"prompt": "x", "adapter": "a"}, True),
    (kaito_protocol.ChatRequest, {"prompt": "x", "adapter": 3}, False),
    (mosaic_protocol.PredictRequest, {"inputs": ["x"], "parameters": {"adapter": "a", "max_new_tokens": 2}},
     True),
    (openai_protocol.CompletionRequest, {"prompt": "x", "model": "my-adapter"}, True),
])
def test_adapter_fields_are_in_the_schema(model: type[BaseModel], body: dict, ok: bool) -> None:
    assert _model_accepts(model, body) is ok
    assert _schema_accepts(model, body) is ok


@pytest.mark.parametrize("model,body", [
    (openai_protocol.ChatCompletionRequest, {"messages": MSG, "frequency_penalty": 1}),
    (openai_protocol.ChatCompletionRequest, {"messages": MSG, "tools": [{"type": "function"}]}),
    (openai_protocol.ChatCompletionRequest, {"messages": MSG, "logit_bias": {"1": 2}}),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"grammar": {"type": "json"}}}),
    (responses_protocol.ResponsesRequest, {"input": "x", "previous_response_id": "resp_1"}),
    (responses_protocol.ResponsesRequest, {"input": "x", "background": True}),
    (responses_protocol.ResponsesRequest, {"input": "x", "top_logprobs": 2}),
    (responses_protocol.ResponsesRequest, {"input": "x", "reasoning": {"effort": "high"}}),
    (responses_protocol.ResponsesRequest, {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:,"}]}]}),
    (responses_protocol.ResponsesRequest, {"input": "x", "tools": [{"type": "web_search"}]}),
    (responses_protocol.ResponsesRequest, {"input": "x", "text": {"format": {"type": "yaml"}}}),
    (responses_protocol.ResponsesRequest, {"input": [{"type": "reasoning", "summary": []}]}),
    (tgi_protocol.GenerateRequest, {"inputs": "x", "parameters": {"grammar": {"type": "ebnf",
                                                                              "value": "x"}}}),
    (tokenize_protocol.TokenizeRequest, {"prompt": "x", "messages": MSG}),
])
def test_unsupported_values_are_outside_the_schema(model: type[BaseModel], body: dict) -> None:
    # the model lets them through so the handler can say clearly why they are refused
    assert _model_accepts(model, body)
    assert not _schema_accepts(model, body)
