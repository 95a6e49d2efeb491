"""`/v1/responses` on the real server with the real `openai` SDK: `responses.create` and
`responses.stream` give the same text as chat completions at temperature 0, the streamed events come
in the SDK's order, `max_output_tokens` makes the reply incomplete, and refusals reach the SDK."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.support.schema_check import check

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"
ORDER = ["response.created", "response.in_progress", "response.output_item.added",
         "response.content_part.added"]
TAIL = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", timeout=300, max_retries=0)


def _chat(client: openai.OpenAI, messages: list[dict], max_tokens: int) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="m", messages=messages, max_tokens=max_tokens, temperature=0)


def test_create_equals_chat_completions_at_temperature_0(client: openai.OpenAI, base_url: str) -> None:
    r = client.responses.create(model="anything", input=QUESTION, temperature=0, max_output_tokens=24)
    chat = _chat(client, [{"role": "user", "content": QUESTION}], 24)
    assert r.output_text == chat.choices[0].message.content
    assert "Paris" in r.output_text
    assert r.object == "response" and r.status == "completed" and r.incomplete_details is None
    assert r.model == "smollm2-135m-instruct" and r.id.startswith("resp_")
    assert [o.type for o in r.output] == ["message"] and r.output[0].role == "assistant"
    assert r.output[0].status == "completed" and r.output[0].content[0].type == "output_text"
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    raw = requests.post(base_url + "/v1/responses", json={"input": QUESTION, "temperature": 0,
                                                          "max_output_tokens": 24}, timeout=300).json()
    check(base_url, "ResponseObject", raw)  # what /openapi.json documents
    assert raw["output"][0]["content"][0]["text"] == r.output_text


def test_stream_events_in_order_and_text_equal_to_chat(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You are a geography teacher. Answer in one sentence."},
                {"role": "user", "content": QUESTION}]
    with client.responses.stream(model="m", instructions=messages[0]["content"],
                                 input=[{"role": "user",
                                         "content": [{"type": "input_text", "text": QUESTION}]}],
                                 temperature=0, max_output_tokens=40) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds[:4] == ORDER and kinds[-4:] == [*TAIL, "response.completed"]
    assert kinds[4:-4] == ["response.output_text.delta"] * len(deltas) and len(deltas) > 1
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in deltas)
    assert text == final.output_text == events[-4].text
    assert text == _chat(client, messages, 40).choices[0].message.content
    assert final.status == "completed" and final.usage.output_tokens > 0
    assert len({e.item_id for e in deltas}) == 1 and deltas[0].item_id == final.output[0].id


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI, base_url: str) -> None:
    r = client.responses.create(model="m", input="Tell me a long story about a dragon.", temperature=0,
                                max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5 and r.output[0].status == "incomplete"
    events = _raw_events(base_url, {"input": "Tell me a long story about a dragon.", "temperature": 0,
                                    "max_output_tokens": 5, "stream": True})
    assert events[-1][0] == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["status"] == "incomplete" and final["output"][0]["content"][0]["text"] == r.output_text


def _raw_events(base_url: str, body: dict) -> list[tuple[str, dict]]:
    """(SSE event name, data) pairs: the `event:` line names the same type as the data."""
    r = requests.post(base_url + "/v1/responses", json=body, stream=True, timeout=300)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    out, name = [], None
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["type"] == name
            out.append((name, data))
    return out


def test_conversation_in_input_is_honoured(client: openai.OpenAI) -> None:
    turns = [{"role": "user", "content": QUESTION},
             {"role": "assistant", "content": "The capital of France is Paris."},
             {"role": "user", "content": "And of Germany?"}]
    r = client.responses.create(model="m", input=turns, temperature=0, max_output_tokens=20)
    assert r.output_text == _chat(client, turns, 20).choices[0].message.content


@pytest.mark.parametrize("kwargs,param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),  # hosted tools (functions are served)
    ({"previous_response_id": "resp_0123"}, "previous_response_id"),
    ({"background": True}, "background"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
     "input[0].content[0]"),
])
def test_refusals_reach_the_sdk(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**{"model": "m", "input": "hi", **kwargs})
    assert info.value.body["param"] == param
