"""The dialects through the unchanged client libraries users have: text-generation 0.7.0,
lorax-client 0.6.3 and mosaicml-cli 0.8.3.

They pin huggingface-hub<1.0 (the server's transformers needs 2.x), so they run from .venv-clients
(`make clients`) as subprocesses; tests/integration/clients/run_client.py prints what they returned.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.clients import run_client

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def tgi(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_client("tgi", base_url, tmp_path_factory.mktemp("tgi"))


@pytest.fixture(scope="module")
def lorax(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_client("lorax", base_url, tmp_path_factory.mktemp("lorax"))


@pytest.fixture(scope="module")
def mcli(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_client("mcli", base_url, tmp_path_factory.mktemp("mcli"))


def test_text_generation_plain(tgi: dict[str, Any]) -> None:
    r = tgi["plain"]
    assert "Paris" in r["generated_text"]
    d = r["details"]
    assert d["finish_reason"] == "length" and d["generated_tokens"] == 5
    assert "".join(t["text"] for t in d["tokens"]) == r["generated_text"]
    assert len(d["prefill"]) == 5 and d["prefill"][0]["logprob"] is None
    assert [len(s) for s in d["top_tokens"]] == [2] * 5


def test_text_generation_stream(tgi: dict[str, Any]) -> None:
    events = tgi["stream"]
    assert len(events) == 5 and events[-1]["generated_text"] == tgi["plain"]["generated_text"]
    assert events[-1]["details"]["generated_tokens"] == 5
    assert all(isinstance(e["token"]["logprob"], float) for e in events)


def test_text_generation_stop_seed_best_of_full_text(tgi: dict[str, Any]) -> None:
    assert tgi["stop"]["generated_text"] == " Paris."
    assert tgi["stop"]["details"]["finish_reason"] == "stop_sequence"
    assert tgi["seed"][0] == tgi["seed"][1]
    assert len(tgi["best_of"]["details"]["best_of_sequences"]) == 1
    assert tgi["full_text"].startswith("The capital of France is Paris")
    assert tgi["too_long"]["type"] == "ValidationError" and "context length" in tgi["too_long"]["message"]


def test_text_generation_chat(tgi: dict[str, Any]) -> None:
    chat = tgi["chat"]
    assert "Paris" in chat["choices"][0]["message"]["content"]
    assert chat["usage"]["completion_tokens"] > 0


def test_lorax_plain_and_alternatives(lorax: dict[str, Any]) -> None:
    r = lorax["plain"]
    assert "Paris" in r["generated_text"]
    assert r["details"]["prompt_tokens"] == 5 and r["details"]["generated_tokens"] == 5
    for tok in r["details"]["tokens"]:
        assert len(tok["alternative_tokens"]) == 2 and tok["alternative_tokens"][0]["id"] == tok["id"]


def test_lorax_stream_stop_seed(lorax: dict[str, Any]) -> None:
    events = lorax["stream"]
    assert events[-1]["generated_text"] == lorax["plain"]["generated_text"]
    assert events[-1]["details"]["prompt_tokens"] == 5
    assert lorax["stop"]["generated_text"] == " Paris."
    assert lorax["seed"][0] == lorax["seed"][1]


def test_lorax_ignore_eos_and_unknown_adapter(lorax: dict[str, Any]) -> None:
    d = lorax["ignore_eos"]["details"]
    assert d["generated_tokens"] == 6 and d["finish_reason"] == "length"
    assert lorax["adapter"]["type"] == "ValidationError"  # LoRAX's client maps error_type "validation"
    assert "no-such-adapter" in lorax["adapter"]["message"]


def test_mcli_predict(mcli: dict[str, Any]) -> None:
    outputs = mcli["plain"]["outputs"]
    assert "Paris" in outputs[0] and "Berlin" in outputs[1]
    assert "".join(c["outputs"][0] for c in mcli["stream"]) == outputs[0]
    assert mcli["bad"]["type"] == "InferenceServerException" and "400" in mcli["bad"]["message"]
