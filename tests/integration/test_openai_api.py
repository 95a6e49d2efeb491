"""OpenAI dialect against the real server, driven by the real `openai` SDK."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.support.schema_check import check

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", timeout=300, max_retries=0)


def test_models_lists_the_served_name(client: openai.OpenAI, base_url: str) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2-135m-instruct"]
    check(base_url, "ModelList", requests.get(base_url + "/v1/models", timeout=30).json())
    assert client.models.retrieve("smollm2-135m-instruct").id == "smollm2-135m-instruct"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_greedy_answers_paris_with_usage(client: openai.OpenAI, base_url: str) -> None:
    r = client.chat.completions.create(model="anything", messages=QUESTION, max_tokens=12, temperature=0)
    assert "Paris" in r.choices[0].message.content
    assert r.model == "smollm2-135m-instruct"  # any requested name is answered by the served model
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    check(base_url, "ChatCompletion", r.model_dump(mode="json", exclude_unset=True))


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="m", messages=QUESTION, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    greedy = _chat(client, max_tokens=12)
    assert text == greedy.choices[0].message.content  # streaming answers exactly the same text


def _chat(client: openai.OpenAI, **kw) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="m", messages=QUESTION, **{"temperature": 0, **kw})


def test_chat_max_tokens_gives_length(client: openai.OpenAI) -> None:
    r = _chat(client, max_completion_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2


def test_chat_stop_is_cut_from_the_text(client: openai.OpenAI) -> None:
    full = _chat(client, max_tokens=12).choices[0].message.content
    assert " of" in full
    r = _chat(client, max_tokens=12, stop=" of")
    assert r.choices[0].message.content == full[: full.index(" of")]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", messages=QUESTION, max_tokens=12, temperature=0, stop=[" of"], stream=True) if c.choices)
    assert streamed == full[: full.index(" of")]


def test_seed_reproduces_and_n_choices_differ(client: openai.OpenAI) -> None:
    kw = {"model": "m", "messages": QUESTION, "max_tokens": 10, "temperature": 1.0, "n": 3, "seed": 1234}
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    texts_a = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts_a == [c.message.content for c in b.choices]
    assert len(set(texts_a)) > 1  # seed + i per choice: the choices are not copies
    # choice 0 of n=3 is the same request as n=1 with the same seed
    one = client.chat.completions.create(**{**kw, "n": 1})
    assert one.choices[0].message.content == texts_a[0]
    assert a.usage.completion_tokens > 3  # all three choices are counted


def test_chat_logprobs_shape(client: openai.OpenAI, base_url: str) -> None:
    r = _chat(client, max_tokens=6, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert content and "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert t.top_logprobs[0].token == t.token  # greedy picks the most likely token
        assert bytes(t.bytes).decode() == t.token
    check(base_url, "ChatCompletion", r.model_dump(mode="json", exclude_unset=True))


def test_completions_plain_stream_and_echo(client: openai.OpenAI, base_url: str) -> None:
    r = client.completions.create(model="m", prompt=PROMPT, max_tokens=4, temperature=0)
    assert "Paris" in r.choices[0].text and r.object == "text_completion"
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 4
    check(base_url, "Completion", r.model_dump(mode="json", exclude_unset=True))
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt=PROMPT, max_tokens=4, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text
    echo = client.completions.create(model="m", prompt=PROMPT, max_tokens=4, temperature=0, echo=True,
                                      logprobs=1)
    assert echo.choices[0].text == PROMPT + r.choices[0].text
    lp = echo.choices[0].logprobs
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == echo.choices[0].text
    assert lp.text_offset[1] == len(lp.tokens[0])


def test_completions_prompt_list_and_token_ids(client: openai.OpenAI) -> None:
    r = client.completions.create(model="m", prompt=[PROMPT, "The capital of Germany is"], max_tokens=3,
                                  temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert "Paris" in r.choices[0].text and "Berlin" in r.choices[1].text
    ids = client.completions.create(model="m", prompt=[504, 3575, 282, 4649, 314], max_tokens=3,
                                    temperature=0)
    assert ids.choices[0].text == client.completions.create(model="m", prompt=PROMPT, max_tokens=3,
                                                            temperature=0).choices[0].text


def test_completions_best_of_returns_n(client: openai.OpenAI) -> None:
    r = client.completions.create(model="m", prompt=PROMPT, max_tokens=4, n=1, best_of=3, seed=5)
    assert len(r.choices) == 1 and r.usage.completion_tokens >= 4  # all candidates are counted


def test_completions_stop_list(client: openai.OpenAI) -> None:
    r = client.completions.create(model="m", prompt=PROMPT, max_tokens=8, temperature=0, stop=[".", "!"])
    assert r.choices[0].text == " Paris" and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("body,param", [
    ({"messages": QUESTION, "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"messages": QUESTION, "presence_penalty": 1}, "presence_penalty"),
    ({"messages": QUESTION, "logit_bias": {"5": 1}}, "logit_bias"),
    ({"messages": QUESTION, "n": 0}, "n"),
    ({"messages": QUESTION, "temperature": 3}, "temperature"),
    ({"messages": QUESTION, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "tools"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": QUESTION, "stop": ["", "x"]}, "stop"),
    ({"messages": QUESTION, "max_tokens": 100000}, None),
])
def test_chat_bad_input_is_400_in_openai_shape(base_url: str, body: dict, param: str | None) -> None:
    r = requests.post(base_url + "/v1/chat/completions", json={"model": "m", **body}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    if param:
        assert err["param"] is not None and err["param"].startswith(param.split(".")[0])
    check(base_url, "server__api__openai__protocol__ErrorResponse", r.json())


def test_sdk_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _chat(client, frequency_penalty=1.0)
    assert "frequency_penalty" in str(info.value)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="m", prompt=PROMPT, suffix="tail")


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b""])
def test_non_object_bodies_are_400(base_url: str, raw: bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        r = requests.post(base_url + path, data=raw, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 400 and "message" in r.json()["error"]


def test_stream_is_sse_ending_in_done(base_url: str) -> None:
    r = requests.post(base_url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "stream": True,
                                                          "temperature": 0}, stream=True, timeout=60)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    for e in events[:-1]:
        assert json.loads(e[6:])["object"] == "text_completion"
