"""TGI dialect against the real server: Hugging Face's InferenceClient, plus raw HTTP for the wire."""

from __future__ import annotations

import json

import pytest
import requests
from huggingface_hub import InferenceClient
from huggingface_hub.errors import TextGenerationError

from server.model.cpuinfo import cpu_flags
from tests.support.schema_check import check
from tests.support.servers import MODEL_DIR

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def hf(base_url: str) -> InferenceClient:
    return InferenceClient(base_url=base_url, timeout=300)


def _gen(base_url: str, path: str = "/generate", **params) -> requests.Response:
    return requests.post(base_url + path, json={"inputs": PROMPT, "parameters": params}, timeout=120)


def test_inference_client_plain_and_details(hf: InferenceClient, base_url: str) -> None:
    assert "Paris" in hf.text_generation(PROMPT, max_new_tokens=5)
    out = hf.text_generation(PROMPT, max_new_tokens=5, details=True, decoder_input_details=True)
    assert "Paris" in out.generated_text
    d = out.details
    assert d.finish_reason == "length" and d.generated_tokens == 5 and d.seed is None
    assert "".join(t.text for t in d.tokens) == out.generated_text
    assert all(t.logprob <= 0 and not t.special for t in d.tokens)
    assert [p.id for p in d.prefill] == [504, 3575, 282, 4649, 314]
    assert d.prefill[0].logprob is None and all(p.logprob < 0 for p in d.prefill[1:])
    check(base_url, "GenerateResponse", _gen(base_url, details=True, max_new_tokens=3).json())


def test_inference_client_stream(hf: InferenceClient) -> None:
    events = list(hf.text_generation(PROMPT, max_new_tokens=5, stream=True, details=True))
    assert len(events) == 5
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    last = events[-1]
    assert "Paris" in last.generated_text == "".join(e.token.text for e in events)
    assert last.details.finish_reason == "length" and last.details.generated_tokens == 5
    assert "".join(hf.text_generation(PROMPT, max_new_tokens=5, stream=True)) == last.generated_text


def test_inference_client_chat_completion(hf: InferenceClient) -> None:
    r = hf.chat_completion([{"role": "user", "content": "What is the capital of France?"}], max_tokens=12,
                           temperature=0)
    assert "Paris" in r.choices[0].message.content
    text = "".join(c.choices[0].delta.content or "" for c in hf.chat_completion(
        [{"role": "user", "content": "What is the capital of France?"}], max_tokens=12, temperature=0,
        stream=True) if c.choices)
    assert text == r.choices[0].message.content


def test_stop_sequence_stays_in_text(base_url: str) -> None:
    d = _gen(base_url, max_new_tokens=10, stop=["."], details=True).json()
    assert d["generated_text"] == " Paris."  # TGI keeps the stop sequence
    assert d["details"]["finish_reason"] == "stop_sequence"


def test_eos_finish_reason(base_url: str) -> None:
    r = requests.post(base_url + "/generate", json={
        "inputs": "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n",
        "parameters": {"max_new_tokens": 40, "details": True}}, timeout=120).json()
    assert r["details"]["finish_reason"] == "eos_token"
    last = r["details"]["tokens"][-1]
    assert last["special"] is True and last["text"] == "<|im_end|>"
    assert "<|im_end|>" not in r["generated_text"]


def test_seed_and_sampling(base_url: str) -> None:
    a = _gen(base_url, max_new_tokens=8, do_sample=True, seed=42, details=True).json()
    b = _gen(base_url, max_new_tokens=8, do_sample=True, seed=42, details=True).json()
    assert a["generated_text"] == b["generated_text"] and a["details"]["seed"] == 42
    unseeded = _gen(base_url, max_new_tokens=8, temperature=0.7, details=True).json()
    seed = unseeded["details"]["seed"]  # TGI reports the seed it drew
    assert isinstance(seed, int)
    again = _gen(base_url, max_new_tokens=8, temperature=0.7, seed=seed).json()
    assert again["generated_text"] == unseeded["generated_text"]


def test_best_of_picks_highest_logprob(base_url: str) -> None:
    r = _gen(base_url, max_new_tokens=4, do_sample=True, best_of=3, details=True).json()
    d = r["details"]
    others = d["best_of_sequences"]
    assert len(others) == 2
    best = sum(t["logprob"] for t in d["tokens"])
    assert all(best >= sum(t["logprob"] for t in o["tokens"]) for o in others)
    assert all(o["seed"] != d["seed"] for o in others)


def test_return_full_text_truncate_top_n_and_watermark(base_url: str) -> None:
    r = _gen(base_url, max_new_tokens=3, return_full_text=True).json()
    assert r["generated_text"].startswith(PROMPT + " Paris")
    t = _gen(base_url, max_new_tokens=2, truncate=2, decoder_input_details=True, details=True).json()
    assert [p["id"] for p in t["details"]["prefill"]] == [4649, 314]  # " France is"
    assert t["details"]["prompt_tokens"] == 2
    top = _gen(base_url, max_new_tokens=2, top_n_tokens=3, details=True).json()["details"]
    assert [len(s) for s in top["top_tokens"]] == [3, 3]
    assert top["top_tokens"][0][0]["id"] == top["tokens"][0]["id"]
    wm = _gen(base_url, max_new_tokens=6, watermark=True, do_sample=True, seed=3, details=True)
    assert wm.status_code == 200 and wm.json()["details"]["generated_tokens"] > 0


def test_compat_route_list_and_stream(base_url: str) -> None:
    r = requests.post(base_url + "/", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3}},
                      timeout=120)
    body = r.json()
    assert isinstance(body, list) and len(body) == 1 and "Paris" in body[0]["generated_text"]
    s = requests.post(base_url + "/", json={"inputs": PROMPT, "stream": True,
                                            "parameters": {"max_new_tokens": 3, "details": True}},
                      stream=True, timeout=120)
    assert s.headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line[5:]) for line in s.iter_lines(decode_unicode=True) if line]
    assert [e["index"] for e in events] == [1, 2, 3]
    assert events[-1]["generated_text"] == body[0]["generated_text"]
    for e in events:
        check(base_url, "StreamResponse", e)


def test_info(base_url: str) -> None:
    info = requests.get(base_url + "/info", timeout=30).json()
    assert info["model_id"] == "smollm2-135m-instruct" and info["max_total_tokens"] == 8192
    assert info["model_device_type"] == "cpu" and info["max_best_of"] >= 2
    check(base_url, "Info", info)
    # TORCH_DTYPE=auto: the model's own dtype where this CPU computes it natively, and why
    own = json.loads((MODEL_DIR / "config.json").read_text()).get("dtype")
    native = bool({"amx_bf16", "avx512_bf16"} & cpu_flags())
    assert info["dtype"]["name"] == ("bfloat16" if own == "bfloat16" and native else "float32")
    assert info["dtype"]["reason"].startswith("auto") and info["dtype"]["name"] == info["model_dtype"]


@pytest.mark.parametrize("params,status,needle", [
    ({"temperature": 0}, 422, "temperature"),
    ({"top_p": 1.0}, 422, "top_p"),
    ({"max_new_tokens": 0}, 422, "max_new_tokens"),
    ({"max_new_tokens": 100000}, 422, "context length"),
    ({"best_of": 2}, 422, "sampling"),
    ({"best_of": 2, "do_sample": True, "seed": 1}, 422, "seed"),
    ({"frequency_penalty": 0.5}, 422, "frequency_penalty"),
    ({"grammar": {"type": "json", "value": {"type": "objekt"}}}, 422, "grammar"),
    ({"stop": [""]}, 422, "stop"),
    # LoRAX adapters (this server has none; tests/integration/test_adapters_api.py serves some)
    ({"adapter_id": "no-such-adapter"}, 404, "no-such-adapter"),
    ({"adapter_id": "a", "adapter_source": "s3"}, 400, "s3"),
    ({"merged_adapters": {"ids": ["a", "b"], "weights": [1.0]}}, 400, "weights"),
    ({"adapter_id": "a", "merged_adapters": {"ids": ["a"], "weights": [1.0]}}, 422, "at most one"),
])
def test_bad_parameters_get_tgi_errors(base_url: str, params: dict, status: int, needle: str) -> None:
    for path in ("/generate", "/generate_stream", "/"):
        r = _gen(base_url, path, **params)
        assert r.status_code == status, r.text
        body = r.json()
        assert body["error_type"] == "validation" and needle in body["error"]
        check(base_url, "server__api__tgi__protocol__ErrorResponse", body)


def test_bad_bodies_and_streamed_best_of(base_url: str) -> None:
    for body in ({}, {"inputs": ""}, {"inputs": 5}, {"inputs": PROMPT, "parameters": "x"}):
        r = requests.post(base_url + "/generate", json=body, timeout=30)
        assert r.status_code == 422 and r.json()["error_type"] == "validation", body
    r = requests.post(base_url + "/generate", data=b"{", timeout=30)
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    r = _gen(base_url, "/generate_stream", best_of=2, do_sample=True)
    assert r.status_code == 422 and "best_of" in r.json()["error"]


def test_inference_client_raises_validation_error(hf: InferenceClient) -> None:
    with pytest.raises(TextGenerationError) as info:
        hf.text_generation(PROMPT, max_new_tokens=5, temperature=-1.0)
    assert type(info.value).__name__ == "ValidationError"
