"""Structured outputs and tool calls on the OpenAI routes, against the real server, driven by the
real openai SDK and LangChain: every constraint is enforced or refused with a 400."""

from __future__ import annotations

import enum
import json
import re
from typing import Any

import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.support.schema_check import check

pytestmark = pytest.mark.integration

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 16}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time in a time zone",
                                           "parameters": TIME}}]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


class Kind(enum.Enum):
    cat = "cat"
    dog = "dog"


class Pet(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=30)
    kind: Kind


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", timeout=300, max_retries=0)


def _chat(client: openai.OpenAI, messages: list[dict[str, Any]] | None = None, **kw: Any) -> Any:
    return client.chat.completions.create(model="m", messages=messages or ASK,
                                          **{"temperature": 0, "max_tokens": 48, **kw})


def _valid_call(call: Any, schema: dict[str, Any]) -> dict[str, Any]:
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id) and call.type == "function"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, schema)
    return args


# ---------------------------------------------------------------- structured outputs

def test_parse_with_a_pydantic_model(client: openai.OpenAI, base_url: str) -> None:
    r = client.chat.completions.parse(
        model="m", messages=[{"role": "user", "content": "Describe a pet as JSON."}], response_format=Pet,
        temperature=0, max_tokens=48)
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Pet) and isinstance(choice.message.parsed.kind, Kind)
    check(base_url, "ChatCompletion", r.model_dump(mode="json", exclude_unset=True, exclude={
        "choices": {0: {"message": {"parsed"}}}}))


def test_json_object(client: openai.OpenAI) -> None:
    r = _chat(client, [{"role": "user", "content": "Give a person's name and age as a JSON object."}],
              response_format={"type": "json_object"}, max_tokens=40)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_streams_the_same_text(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    whole = _chat(client, response_format=fmt).choices[0].message.content
    jsonschema.validate(json.loads(whole), PERSON)
    chunks = list(_chat(client, response_format=fmt, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


@pytest.mark.parametrize("extra,check_text", [
    ({"structured_outputs": {"regex": "[0-9]{3}-[0-9]{4}"}}, lambda t: re.fullmatch(r"[0-9]{3}-[0-9]{4}", t)),
    ({"structured_outputs": {"choice": ["sunny", "rainy"]}}, lambda t: t in ("sunny", "rainy")),
    ({"structured_outputs": {"json": PERSON}}, lambda t: jsonschema.validate(json.loads(t), PERSON) is None),
    ({"guided_json": PERSON}, lambda t: jsonschema.validate(json.loads(t), PERSON) is None),
    ({"guided_choice": ["yes", "no"]}, lambda t: t in ("yes", "no")),
    ({"structured_outputs": {"grammar": 'start: "It is " ("hot" | "cold") "."'}},
     lambda t: t in ("It is hot.", "It is cold.")),
])
def test_vllm_fields_through_extra_body(client: openai.OpenAI, extra: dict, check_text: Any) -> None:
    r = _chat(client, extra_body=extra)
    assert r.choices[0].finish_reason == "stop" and check_text(r.choices[0].message.content)


def test_completions_take_vllm_fields(client: openai.OpenAI) -> None:
    r = client.completions.create(model="m", prompt="The capital of France is", max_tokens=8, temperature=0,
                                  extra_body={"guided_choice": [" Paris", " Lyon"]})
    assert r.choices[0].text in (" Paris", " Lyon") and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="m", prompt="Year:", max_tokens=8, temperature=0,
                                  extra_body={"structured_outputs": {"regex": " [12][0-9]{3}"}})
    assert re.fullmatch(r" [12][0-9]{3}", r.choices[0].text)


def test_a_constraint_cut_by_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    r = _chat(client, response_format=fmt, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


# ---------------------------------------------------------------- tools

def test_tool_choice_required(client: openai.OpenAI, base_url: str) -> None:
    r = _chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    _valid_call(call, WEATHER if call.function.name == "get_weather" else TIME)
    check(base_url, "ChatCompletion", r.model_dump(mode="json", exclude_unset=True))


def test_tool_choice_named(client: openai.OpenAI) -> None:
    r = _chat(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == ["get_time"]
    _valid_call(calls[0], TIME)


def test_tool_choice_auto_is_text_or_calls(client: openai.OpenAI) -> None:
    for messages in (ASK, [{"role": "user", "content": "Say hello."}]):
        choice = _chat(client, messages, tools=TOOLS, tool_choice="auto", max_tokens=40).choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            for call in choice.message.tool_calls:
                _valid_call(call, WEATHER if call.function.name == "get_weather" else TIME)
        else:
            assert choice.finish_reason in ("stop", "length") and choice.message.content
            assert "<tool_call>" not in choice.message.content


def test_tool_choice_none_is_plain_text(client: openai.OpenAI) -> None:
    plain = _chat(client, max_tokens=12).choices[0].message.content
    r = _chat(client, tools=TOOLS, tool_choice="none", max_tokens=12)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content == plain


def test_streamed_tool_calls(client: openai.OpenAI) -> None:
    stream = _chat(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                   stream=True)
    chunks = [c for c in stream if c.choices]
    parts = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    first = parts[0]
    assert first.index == 0 and re.fullmatch(r"call_[0-9a-f]{24}", first.id) and first.type == "function"
    assert first.function.name == "get_weather" and first.function.arguments == ""
    assert all(p.id is None and p.function.name is None for p in parts[1:])
    arguments = "".join(p.function.arguments for p in parts)
    jsonschema.validate(json.loads(arguments), WEATHER)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks)
    whole = _chat(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert whole.choices[0].message.tool_calls[0].function.arguments == arguments  # same greedy answer


def test_tool_round_trip(client: openai.OpenAI) -> None:
    first = _chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees"}]
    second = _chat(client, history, tools=TOOLS, max_tokens=16)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt


# ---------------------------------------------------------------- LangChain

def get_weather(city: str, unit: str) -> str:
    """The weather in a city.

    Args:
        city: the city
        unit: celsius or fahrenheit
    """
    return "sunny"


def test_langchain_structured_output_and_bound_tools(base_url: str) -> None:
    llm = ChatOpenAI(base_url=base_url + "/v1", api_key="x", model="m", temperature=0, max_tokens=48,
                     max_retries=0)
    pet = llm.with_structured_output(Pet, method="json_schema").invoke("Describe a pet.")
    assert isinstance(pet, Pet)
    msg = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
    assert set(msg.tool_calls[0]["args"]) == {"city", "unit"}


# ---------------------------------------------------------------- bad input

HUGE_ENUM = {"type": "object", "properties": {"x": {"enum": [f"value-number-{i:05d}" for i in range(5000)]}}}


def _schema(schema: Any) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema,
                                                                      "strict": True}}}


@pytest.mark.parametrize("body,param", [
    (_schema({"type": "foo"}), "response_format"),
    (_schema({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}), "response_format"),
    (_schema(HUGE_ENUM), "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"extra_body": {"structured_outputs": {"regex": "[a-"}}}, "structured_outputs"),
    ({"extra_body": {"structured_outputs": {"grammar": "start: ( nope"}}}, "structured_outputs"),
    ({"extra_body": {"guided_json": {"type": "foo"}}}, "guided_json"),
    ({"extra_body": {"guided_regex": "x", "guided_choice": ["a"]}}, "guided"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "foo"}}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_bad_constraints_are_400_in_openai_shape(client: openai.OpenAI, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _chat(client, max_tokens=4, **body)
    err = info.value.body
    assert info.value.status_code == 400 and err["type"] == "invalid_request_error"
    assert err["param"] and err["param"].startswith(param), err


def test_bad_constraint_on_completions_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="m", prompt="x", max_tokens=2, extra_body={"guided_regex": "(("})
    assert info.value.body["param"] == "guided_regex"
