"""Structured output and tool calls in the dialects other than OpenAI chat, on the real server and
through the real clients: the text-generation client's `Grammar`, lorax-client's `response_format`,
Kaito `/chat` with `response_format`, the openai SDK's `responses.parse` and Responses function
calls; and each bad input, refused in its dialect's error shape (never ignored, never a 500).

Greedy and short (max 40 new tokens): the model is SmolLM2-135M on a small CPU.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
import openai
import pytest
import requests
from pydantic import BaseModel, Field

from tests.integration.clients.run_client import CODE, PERSON
from tests.support.clients import run_client

pytestmark = pytest.mark.integration

NAME_AGE = "Describe a person as JSON with a name and an age:"


def _person(text: str) -> dict[str, Any]:
    value = json.loads(text)
    jsonschema.validate(value, PERSON)
    return value


# ---------------------------------------------------------------- TGI and LoRAX, through their clients

@pytest.fixture(scope="module")
def tgi(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_client("tgi_grammar", base_url, tmp_path_factory.mktemp("tgi_grammar"))


@pytest.fixture(scope="module")
def lorax(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_client("lorax_json", base_url, tmp_path_factory.mktemp("lorax_json"))


def test_text_generation_regex_grammar(tgi: dict[str, Any]) -> None:
    for text in (tgi["regex"]["generated_text"], tgi["regex_stream"][-1]["generated_text"]):
        assert re.fullmatch(CODE, text), text
    assert tgi["regex"]["details"]["finish_reason"] == "eos_token"
    streamed = "".join(e["token"]["text"] for e in tgi["regex_stream"] if not e["token"]["special"])
    assert streamed == tgi["regex"]["generated_text"]


def test_text_generation_json_grammar(tgi: dict[str, Any]) -> None:
    plain = tgi["json"]["generated_text"]
    _person(plain)
    assert tgi["json_stream"][-1]["generated_text"] == plain
    assert tgi["json_stream"][-1]["details"]["finish_reason"] == "eos_token"
    # a constraint the token limit cuts short ends with `length`, never hangs
    assert tgi["json_short"]["details"]["finish_reason"] == "length"
    assert tgi["json_short"]["details"]["generated_tokens"] == 3


def test_text_generation_bad_grammars_are_validation_errors(tgi: dict[str, Any]) -> None:
    for key, words in (("bad_regex", "regex"), ("bad_schema", "grammar.value"),
                       ("bad_schema_stream", "grammar.value")):
        assert tgi[key]["type"] == "ValidationError", tgi[key]
        assert words in tgi[key]["message"]


def test_lorax_response_format(lorax: dict[str, Any]) -> None:
    text = lorax["schema"]["generated_text"]
    _person(text)
    assert lorax["schema_dict"]["generated_text"] == text
    assert lorax["stream"][-1]["generated_text"] == text


def test_lorax_bad_response_formats(lorax: dict[str, Any]) -> None:
    assert lorax["bad_schema"]["type"] == "ValidationError"
    assert "response_format.schema" in lorax["bad_schema"]["message"]
    assert lorax["bad_type"]["type"] == "ValidationError" and "yaml" in lorax["bad_type"]["message"]


def _tgi(base_url: str, path: str, inputs: str, **parameters: Any) -> requests.Response:
    return requests.post(base_url + path, json={"inputs": inputs, "parameters": {"max_new_tokens": 40,
                                                                                 **parameters}}, timeout=300)


def test_tgi_json_object_alias_and_schema_as_text(base_url: str) -> None:
    r = _tgi(base_url, "/generate", NAME_AGE, grammar={"type": "json_object", "value": json.dumps(PERSON)})
    assert r.status_code == 200, r.text
    _person(r.json()["generated_text"])


@pytest.mark.parametrize("parameters, words", [
    ({"grammar": {"type": "regex", "value": "(a"}}, "regex"),
    ({"grammar": {"type": "json", "value": {"type": 5}}}, "grammar.value"),
    ({"grammar": {"type": "json", "value": "{not json"}}, "grammar.value"),
    ({"grammar": {"type": "ebnf", "value": "x"}}, "grammar.type"),
    ({"grammar": {"type": "regex"}}, "grammar.value"),
    ({"grammar": "json"}, "grammar"),
    ({"response_format": {"type": "json_schema"}}, "response_format.schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"grammar": {"type": "regex", "value": "a"}, "response_format": {"type": "json_object"}}, "only one"),
])
def test_tgi_bad_constraints_are_422_in_tgi_shape(base_url: str, parameters: dict, words: str) -> None:
    for path in ("/generate", "/generate_stream", "/"):
        r = _tgi(base_url, path, "Hi", **parameters)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error_type"] == "validation" and words in body["error"], body


# ---------------------------------------------------------------- Kaito /chat

def _kaito(base_url: str, **body: Any) -> requests.Response:
    return requests.post(base_url + "/chat", json={
        "generate_kwargs": {"do_sample": False, "max_new_tokens": 40}, **body}, timeout=300)


def test_kaito_response_format_json_schema_and_json_object(base_url: str) -> None:
    messages = [{"role": "user", "content": NAME_AGE}]
    r = _kaito(base_url, messages=messages, response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    assert r.status_code == 200, r.text
    _person(r.json()["Result"])
    r = _kaito(base_url, prompt="A JSON object describing a cat: ", return_full_text=False,
               response_format={"type": "json_object"})
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["Result"]), dict)
    r = _kaito(base_url, messages=messages, response_format={"type": "text"})  # no constraint
    assert r.status_code == 200 and r.json()["Result"]


@pytest.mark.parametrize("response_format, status, words", [
    ({"type": "json_schema", "json_schema": {"name": "x"}}, 400, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}, 400,
     "invalid JSON schema"),
    ({"type": "yaml"}, 400, "response_format.type"),
    ("json", 422, "response_format"),  # a body that fails the request model: Kaito's (FastAPI's) 422
])
def test_kaito_bad_response_format_is_4xx(base_url: str, response_format: Any, status: int,
                                          words: str) -> None:
    r = _kaito(base_url, prompt="Hi", response_format=response_format)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["detail"] and words in r.json()["detail"]


# ---------------------------------------------------------------- MosaicML /predict

def test_mosaic_has_no_constraint_field_and_refuses_one(base_url: str) -> None:
    r = requests.post(base_url + "/predict", json={"inputs": ["Hi"], "parameters": {
        "response_format": {"type": "json_object"}}}, timeout=60)
    assert r.status_code == 400 and r.json()["code"] == 400 and "response_format" in r.json()["error"]


# ---------------------------------------------------------------- OpenAI Responses, through the SDK

class Pet(BaseModel):
    name: str = Field(max_length=12)
    age: int
    kind: Literal["cat", "dog"]


WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"], "additionalProperties": False}, "strict": True}
ASK = "What is the weather in Paris?"
GREEDY: dict[str, Any] = {"model": "m", "temperature": 0, "max_output_tokens": 40}


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=300)


def test_responses_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    r = client.responses.parse(input="Describe a pet as JSON.", text_format=Pet, **GREEDY)
    assert r.status == "completed" and isinstance(r.output_parsed, Pet)
    assert r.text.format.type == "json_schema" and r.text.format.name == "Pet"  # echoed as sent
    assert r.text.format.schema_["required"] == ["name", "age", "kind"]


def test_responses_json_object(client: openai.OpenAI) -> None:
    r = client.responses.create(input='What is 2+2? Answer as JSON: {"answer": <number>}',
                                text={"format": {"type": "json_object"}}, **GREEDY)
    assert isinstance(json.loads(r.output_text), dict) and r.text.format.type == "json_object"


@pytest.fixture(scope="module")
def forced_call(client: openai.OpenAI) -> Any:
    """One forced call (tool_choice required), shared by the tests below to keep the run short."""
    return client.responses.create(input=ASK, tools=[WEATHER], tool_choice="required",
                                   parallel_tool_calls=False, **GREEDY)


@pytest.mark.parametrize("named", [False, True])
def test_responses_function_call(client: openai.OpenAI, forced_call: Any, named: bool) -> None:
    r = forced_call
    if named:
        r = client.responses.create(input=ASK, tools=[WEATHER], tool_choice={"type": "function",
                                                                             "name": "get_weather"}, **GREEDY)
        assert r.tool_choice.name == "get_weather"  # echoed
    assert r.status == "completed" and [o.type for o in r.output] == ["function_call"]
    call = r.output[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.status == "completed"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert r.tools[0].name == "get_weather" and r.tools[0].parameters == WEATHER["parameters"]  # echoed


def test_responses_function_call_streamed_in_the_sdks_order(client: openai.OpenAI, forced_call: Any) -> None:
    events = list(client.responses.create(input=ASK, tools=[WEATHER], tool_choice="required",
                                          parallel_tool_calls=False, stream=True, **GREEDY))
    kinds = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert deltas and kinds == (["response.created", "response.in_progress", "response.output_item.added"]
                                + ["response.function_call_arguments.delta"] * len(deltas)
                                + ["response.function_call_arguments.done", "response.output_item.done",
                                   "response.completed"])
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added, done = events[2].item, events[-2].item
    assert added.type == "function_call" and added.arguments == "" and added.status == "in_progress"
    assert done.id == added.id and done.call_id == added.call_id and done.status == "completed"
    assert "".join(deltas) == events[-3].arguments == done.arguments
    assert events[-1].response.output[0].arguments == done.arguments
    assert done.arguments == forced_call.output[0].arguments  # greedy: the same call as not streamed


def test_responses_function_call_round_trip(client: openai.OpenAI, forced_call: Any) -> None:
    call = forced_call.output[0]
    history = [{"role": "user", "content": ASK}, call,
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 21}'}]
    second = client.responses.create(input=history, tools=[WEATHER], tool_choice="none",
                                     **{**GREEDY, "max_output_tokens": 20})
    assert second.output[0].type == "message" and second.output_text
    # the call and its result both reached the prompt
    call_only = client.responses.create(input=history[:2], tools=[WEATHER], tool_choice="none",
                                        **{**GREEDY, "max_output_tokens": 1})
    assert second.usage.input_tokens > call_only.usage.input_tokens > 10


@pytest.mark.parametrize("kwargs, param", [
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "objekt"}}}},
     "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}}, "text.format"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"tools": [{**WEATHER, "parameters": {"type": "object", "properties": {"city": {"type": 5}}}}]},
     "tools[0].parameters"),
    ({"tools": [{**WEATHER, "parameters": "a string"}]}, "tools[0].parameters"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_time"}}, "tool_choice"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, "input[0].call_id"),
])
def test_responses_bad_constraints_are_400_in_openai_shape(client: openai.OpenAI, kwargs: dict,
                                                           param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**{"input": "hi", **GREEDY, **kwargs})
    assert info.value.status_code == 400
    assert info.value.body["param"] == param and info.value.body["type"] == "invalid_request_error"
