"""LoRA adapters through every dialect, on the real server (gunicorn, the embedded model) whose
ADAPTERS_DIR holds real peft adapters built by tools/adapters.py in a temporary folder.

One server for the module (starting it is the slow part): adapter1/adapter2 (rank 4) and
adapter3 (rank 8) in ADAPTERS_DIR; an extra root holding a run-time adapter, a corrupt one, one
without weights and a symlink out; a root of adapters trained for other base models; and a folder
outside every root. Real clients: `lorax-client` (from .venv-clients) and `openai`.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.support.clients import run_client
from tests.support.servers import MODEL_DIR, ServerProcess, start_server
from tools.adapters import make_adapters

pytestmark = [pytest.mark.integration, pytest.mark.model]  # builds adapters on the model in-process

PROMPT = "The capital of France is"
ADMIN = "admin-key-1"
N_TOKENS = 8


@pytest.fixture(scope="module")
def layout(adapters_dir: Path, foreign_adapters: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ADAPTERS_DIR (conftest: adapter1, adapter2 rank 4, adapter3 rank 8), the foreign adapters'
    root, and this module's extra root and outside folder."""
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} is missing: run `make model`")
    root = tmp_path_factory.mktemp("adapter-layout")
    extra, outside = root / "extra", root / "outside"
    make_adapters(MODEL_DIR, extra, n=1, seed=50, prefix="late")  # extra/late1: loaded at run time
    shutil.copytree(extra / "late1", outside / "evil")  # a valid adapter, outside every root
    (extra / "link-out").symlink_to(outside / "evil", target_is_directory=True)
    (extra / "corrupt").mkdir()
    (extra / "corrupt" / "adapter_config.json").write_text("{not json")
    shutil.copy(adapters_dir / "adapter1" / "adapter_model.safetensors", extra / "corrupt")
    (extra / "no-weights").mkdir()
    shutil.copy(adapters_dir / "adapter1" / "adapter_config.json", extra / "no-weights")
    (extra / "bad-weights").mkdir()
    shutil.copy(adapters_dir / "adapter1" / "adapter_config.json", extra / "bad-weights")
    (extra / "bad-weights" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    return {"root": root, "dir": adapters_dir, "extra": extra, "outside": outside,
            "other-base": foreign_adapters["shape"], "other-modules": foreign_adapters["modules"]}


@pytest.fixture(scope="module")
def srv(layout: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"ADAPTERS_DIR": str(layout["dir"]),
           "ADAPTER_ROOTS": f"{layout['extra']}:{layout['other-base'].parent}",
           "ADMIN_API_KEYS": ADMIN, "adapter1": "0.7", "MAX_BATCH_SIZE": "16"}
    server = start_server(tmp_path_factory.mktemp("adapter-server"), env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def url(srv: ServerProcess) -> str:
    return srv.url


def kaito(url: str, adapter: str | None = None, **kw: Any) -> requests.Response:
    body: dict[str, Any] = {"prompt": PROMPT, "return_full_text": False,
                            "generate_kwargs": {"max_new_tokens": N_TOKENS, "do_sample": False}, **kw}
    if adapter is not None:
        body["adapter"] = adapter
    return requests.post(url + "/chat", json=body, timeout=300)


def tgi(url: str, **params: Any) -> requests.Response:
    return requests.post(url + "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": N_TOKENS,
                                                                                  **params}}, timeout=300)


def mosaic(url: str, adapter: str | None = None) -> requests.Response:
    params: dict[str, Any] = {"max_new_tokens": N_TOKENS, "temperature": 0}
    if adapter is not None:
        params["adapter"] = adapter
    return requests.post(url + "/predict", json={"inputs": [PROMPT], "parameters": params}, timeout=300)


def completion(url: str, model: str) -> requests.Response:
    body = {"model": model, "prompt": PROMPT, "max_tokens": N_TOKENS, "temperature": 0}
    return requests.post(url + "/v1/completions", json=body, timeout=300)


def text_of(dialect: str, url: str, adapter: str) -> str:
    """The greedy continuation of PROMPT on `adapter` through one dialect."""
    if dialect == "kaito":
        r = kaito(url, adapter)
        assert r.status_code == 200, r.text
        return r.json()["Result"]
    if dialect == "tgi":
        r = tgi(url, adapter_id=adapter)
        assert r.status_code == 200, r.text
        return r.json()["generated_text"]
    if dialect == "mosaic":
        r = mosaic(url, adapter)
        assert r.status_code == 200, r.text
        return r.json()["outputs"][0]
    r = completion(url, adapter)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def admin(url: str, op: str, body: dict[str, Any], key: str | None = ADMIN) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{url}/v1/{op}_lora_adapter", json=body, headers=headers, timeout=300)


# ------------------------------------------------------------------ start-up, selection, dialects

def test_start_up_logs_each_adapter_then_ready_as_kaito(srv: ServerProcess) -> None:
    log = srv.log()
    for name in ("adapter1", "adapter2", "adapter3"):
        assert f"Adapter added: {name}" in log
    ready = log.index("Model loaded successfully")
    assert all(log.index(f"Adapter added: {n}") < ready for n in ("adapter1", "adapter2", "adapter3"))


def test_every_dialect_gives_the_same_greedy_text_per_adapter_and_adapters_differ(url: str) -> None:
    texts = {name: {d: text_of(d, url, name) for d in ("kaito", "tgi", "mosaic", "openai")}
             for name in ("base", "adapter1", "adapter2")}
    for name, by_dialect in texts.items():
        assert len(set(by_dialect.values())) == 1, (name, by_dialect)
    assert len({texts[n]["tgi"] for n in texts}) == 3, texts  # real adapters change greedy outputs


def test_no_adapter_named_is_the_kaito_combination(url: str) -> None:
    default = kaito(url).json()["Result"]
    assert default == kaito(url, "combined").json()["Result"]
    assert default == tgi(url).json()["generated_text"] == mosaic(url).json()["outputs"][0]
    assert default != kaito(url, "base").json()["Result"]


def test_openai_models_lists_base_and_adapters_with_parent(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=300, max_retries=0)
    cards = {m.id: m for m in client.models.list().data}
    base = "smollm2-135m-instruct"
    assert {base, "adapter1", "adapter2", "adapter3"} <= set(cards)
    assert cards[base].model_extra["parent"] is None
    assert all(cards[a].model_extra["parent"] == base for a in ("adapter1", "adapter2", "adapter3"))
    assert client.models.retrieve("adapter2").id == "adapter2"
    chat = client.chat.completions.create(model="adapter1", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=N_TOKENS, temperature=0)
    assert chat.model == "adapter1" and chat.usage.completion_tokens > 0
    by_base = client.completions.create(model=base, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0)
    assert by_base.choices[0].text == text_of("tgi", url, "base") and by_base.model == base
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="adapter2", prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, stream=True) if c.choices)
    assert streamed == text_of("tgi", url, "adapter2")
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-adapter", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=2)
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"


def test_openai_responses_and_n_choices_use_the_adapter(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=300, max_retries=0)
    question = [{"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(model="adapter3", messages=question, max_tokens=N_TOKENS,
                                          temperature=0, n=2)
    assert chat.model == "adapter3" and chat.choices[0].message.content == chat.choices[1].message.content
    base = client.chat.completions.create(model="base", messages=question, max_tokens=N_TOKENS, temperature=0)
    assert base.choices[0].message.content != chat.choices[0].message.content
    reply = client.responses.create(model="adapter3", input="Name a colour.", max_output_tokens=N_TOKENS,
                                    temperature=0)
    assert reply.model == "adapter3" and reply.output_text == chat.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-adapter", input="Hi", max_output_tokens=2)
    body = {"prompt": PROMPT, "adapter": None, "return_full_text": False,  # explicit null: DEFAULT_ADAPTER
            "generate_kwargs": {"max_new_tokens": N_TOKENS, "do_sample": False}}
    null = requests.post(url + "/chat", json=body, timeout=300)
    assert null.json()["Result"] == kaito(url, "combined").json()["Result"]  # null = DEFAULT_ADAPTER


def test_lorax_client_and_mcli_on_adapters(url: str, tmp_path: Path) -> None:
    out = run_client("lorax_adapters", url, tmp_path, "adapter1", "adapter2")
    assert out["mcli"]["outputs"] == [text_of("mosaic", url, "adapter1")] == [out["first"]["generated_text"]]
    assert "".join(c["outputs"][0] for c in out["mcli_stream"]) == out["first"]["generated_text"]
    unknown = out["mcli_unknown"]
    assert unknown["type"] == "InferenceServerException" and "404" in unknown["message"]
    assert out["first"]["generated_text"] == text_of("tgi", url, "adapter1")
    assert out["second"] == text_of("tgi", url, "adapter2") and out["base"] == text_of("tgi", url, "base")
    assert "".join(e["token"]["text"] for e in out["stream"]) == out["first"]["generated_text"]
    assert out["merged"] == out["merged_again"]  # the merge is cached under its recipe, deterministic
    assert out["merged"] not in (out["first"]["generated_text"], out["second"], out["base"])
    assert out["ties"]
    assert out["unknown"]["type"] == "ValidationError" and "no-such-adapter" in out["unknown"]["message"]
    assert out["s3"]["type"] == "ValidationError" and "s3" in out["s3"]["message"]


def test_streams_honour_the_adapter(url: str) -> None:
    want = text_of("tgi", url, "adapter2")
    body = {"prompt": PROMPT, "return_full_text": False, "adapter": "adapter2", "stream": True,
            "generate_kwargs": {"max_new_tokens": N_TOKENS, "do_sample": False}}
    with requests.post(url + "/chat", json=body, stream=True, timeout=300) as r:
        events = [json.loads(ln[6:]) for ln in r.iter_lines(decode_unicode=True)
                  if ln.startswith("data: ") and ln != "data: [DONE]"]
    assert "".join(e.get("text", "") for e in events) == want
    params = {"adapter": "adapter2", "max_new_tokens": N_TOKENS, "temperature": 0}
    with requests.post(url + "/v1/predict_stream", json={"inputs": [PROMPT], "parameters": params},
                       stream=True, timeout=300) as r:
        chunks = [json.loads(ln) for ln in r.iter_lines(decode_unicode=True) if ln]
    assert "".join(c["outputs"][0] for c in chunks) == want


def test_mixed_batch_of_adapters_matches_each_alone(url: str) -> None:
    alone = {name: text_of("tgi", url, name) for name in ("base", "adapter1", "adapter2", "adapter3")}
    jobs = [name for name in alone for _ in range(3)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda n: (n, text_of("tgi", url, n)), jobs))
    for name, text in together:
        assert text == alone[name], name


# ------------------------------------------------------------------ run-time loading under traffic

def _stream_tokens(url: str, model: str, n: int, started: threading.Event | None = None) -> tuple[int, str]:
    """Stream one OpenAI completion with exactly n tokens; (status, text)."""
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": n, "min_tokens": n,
            "temperature": 0, "stream": True}
    text = ""
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=600) as r:
        if r.status_code != 200:
            return r.status_code, r.text
        for line in r.iter_lines(decode_unicode=True):
            if started is not None:
                started.set()
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                text += "".join(c["text"] for c in chunk["choices"])
                assert "error" not in chunk, chunk
    return 200, text


def test_load_use_unload_use_again_while_others_stream(url: str, layout: dict[str, Path]) -> None:
    late = str(layout["extra"] / "late1")
    with ThreadPoolExecutor(8) as pool:
        background = [pool.submit(_stream_tokens, url, model, 48)
                      for model in ("base", "adapter1", "adapter2", "adapter3")]
        time.sleep(1.0)
        r = admin(url, "load", {"lora_name": "late", "lora_path": late})
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'late' added successfully."
        assert "late" in {m["id"] for m in requests.get(url + "/v1/models", timeout=30).json()["data"]}
        used = text_of("openai", url, "late")
        assert used and used != text_of("openai", url, "base")
        # unloading waits for the rows that use it: this stream still ends whole
        started = threading.Event()
        in_flight = pool.submit(_stream_tokens, url, "late", 24, started)
        assert started.wait(120)
        r = admin(url, "unload", {"lora_name": "late"})
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'late' removed successfully."
        status, text = in_flight.result(timeout=600)
        assert status == 200 and text
        gone = completion(url, "late")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
        assert tgi(url, adapter_id="late").status_code == 404
        results = [f.result(timeout=600) for f in background]
    assert all(status == 200 and text for status, text in results), results  # no request lost
    assert requests.get(url + "/health", timeout=30).status_code == 200


def test_admin_needs_a_key_and_refuses_what_requests_refuse(url: str, layout: dict[str, Path]) -> None:
    late = str(layout["extra"] / "late1")
    for key in (None, "wrong-key"):
        r = admin(url, "load", {"lora_name": "x", "lora_path": late}, key=key)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
    r = admin(url, "unload", {"lora_name": "never-loaded"})
    assert r.status_code == 404 and "error" in r.json()
    r = admin(url, "load", {"lora_name": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"
    for path in (str(layout["outside"] / "evil"), "../outside/evil", str(layout["extra"] / "link-out"),
                 str(layout["other-base"]), str(layout["extra"] / "corrupt")):
        r = admin(url, "load", {"lora_name": "x", "lora_path": path})
        assert r.status_code == 400 and r.json()["error"]["message"], (path, r.text)
        if "outside" not in path:  # a symlink's target is never shown
            assert str(layout["outside"]) not in r.json()["error"]["message"]


# ------------------------------------------------------------------ bad input, every dialect

def _bad_cases(layout: dict[str, Path]) -> list[tuple[str, str, int]]:
    return [
        ("unknown", "no-such-adapter", 404),
        ("other-base", str(layout["other-base"]), 400),
        ("other-modules", str(layout["other-modules"]), 400),
        ("corrupt-config", str(layout["extra"] / "corrupt"), 400),
        ("missing-weights", str(layout["extra"] / "no-weights"), 400),
        ("corrupt-weights", str(layout["extra"] / "bad-weights"), 400),
        ("dot-dot", "../outside/evil", 400),
        ("absolute-outside", str(layout["outside"] / "evil"), 400),
        ("symlink-out", str(layout["extra"] / "link-out"), 400),
    ]


def _assert_shape(dialect: str, r: requests.Response, status: int) -> str:
    assert r.status_code == status, (dialect, r.status_code, r.text)
    body = r.json()
    if dialect == "kaito":
        assert set(body) == {"detail"}
        return body["detail"]
    if dialect == "openai":
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["param"] == "model"
        if status == 404:
            assert err["code"] == "model_not_found"
        return err["message"]
    if dialect == "tgi":
        assert set(body) == {"error", "error_type"} and body["error_type"] == "validation"
        return body["error"]
    assert body == {"error": body["error"], "code": status}
    return body["error"]


def test_every_bad_adapter_gets_a_4xx_in_each_dialects_shape(url: str, layout: dict[str, Path]) -> None:
    for case, name, status in _bad_cases(layout):
        calls = {"kaito": lambda n=name: kaito(url, n), "openai": lambda n=name: completion(url, n),
                 "tgi": lambda n=name: tgi(url, adapter_id=n), "mosaic": lambda n=name: mosaic(url, n)}
        for dialect, call in calls.items():
            message = _assert_shape(dialect, call(), status)
            assert message, (case, dialect)
            if "outside" not in name:  # where a symlink leads is never shown
                assert str(layout["outside"]) not in message, (case, dialect, message)
    assert text_of("tgi", url, "adapter1")  # still serving


def test_lorax_only_bad_inputs(url: str) -> None:
    cases = [
        ({"adapter_id": "adapter1", "adapter_source": "s3"}, 400, "s3"),
        ({"adapter_id": "adapter1", "adapter_source": "pbase"}, 400, "pbase"),
        # ranks 4 and 8 cannot be merged linearly
        ({"merged_adapters": {"ids": ["adapter1", "adapter3"], "weights": [0.5, 0.5]}}, 400, ""),
        ({"merged_adapters": {"ids": ["adapter1", "adapter2"], "weights": [1.0]}}, 400, "weights"),
        ({"merged_adapters": {"ids": ["adapter1", "no-such-adapter"], "weights": [0.5, 0.5]}}, 404, ""),
        ({"merged_adapters": {"ids": ["adapter1"], "weights": [1.0], "merge_strategy": "svd"}}, 422, ""),
        ({"merged_adapters": {"ids": ["adapter1"], "weights": [1.0], "density": 1.5}}, 422, "density"),
    ]
    for params, status, needle in cases:
        for path in ("/generate", "/generate_stream", "/"):
            body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2, **params}}
            r = requests.post(url + path, json=body, timeout=300)
            assert r.status_code == status, (params, path, r.text)
            body = r.json()
            assert set(body) == {"error", "error_type"} and body["error_type"] == "validation"
            assert needle in body["error"], (params, body)
    assert text_of("tgi", url, "adapter2")


def test_metrics_count_loaded_adapters(url: str) -> None:
    text = requests.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
    if "inferbox_loaded_adapters" not in text:
        pytest.fail("no inferbox_loaded_adapters gauge on /metrics")
    # prometheus_client writes labels sorted by name
    for series in ('inferbox_requests_total{adapter="adapter1",endpoint="/generate",status="200"}',
                   'inferbox_requests_total{adapter="combined",endpoint="/chat",status="200"}',
                   'inferbox_requests_total{adapter="-",endpoint="/generate",status="404"}',
                   'inferbox_generated_tokens_total{adapter="adapter2"}',
                   'inferbox_prompt_tokens_total{adapter="base"}',
                   'inferbox_generated_tokens_total{adapter="merged"}'):
        assert series in text, series
    loaded = [ln for ln in text.splitlines() if ln.startswith("inferbox_loaded_adapters ")]
    assert float(loaded[0].split()[-1]) >= 4  # adapter1-3 and combined
    assert "no-such-adapter" not in text  # names clients made up never become labels

