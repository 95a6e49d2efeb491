"""Tensor parallelism on the CPU: two gloo ranks started by `python -m server` (TENSOR_PARALLEL=2) on a
tiny random Llama with 8 heads and 4 KV heads, against one process serving the same folder.

Greedy answers must be token-identical, alone, batched and streamed, on the batched path and the
exact `generate` lane; what tensor parallelism refuses is refused with its reason; a rank killed
mid-stream gives 503s and an exit, never a hang.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

from tests.support.servers import ROOT, ServerProcess, start_server
from tools.tiny_model import build

TP_ENV = {"TENSOR_PARALLEL": "2", "CPU_LINEAR": "auto", "DRAIN_DELAY_S": "0"}
Pair = tuple[ServerProcess, ServerProcess]  # (one process, two ranks)
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "1, 2, 3, 4, 5,",
           "The quick brown fox", "Tell me about tensors"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def servers(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """(one process, two ranks) serving the same model; the two-rank one is stopped with SIGTERM at
    the end, and must stop its other rank too."""
    logs = tmp_path_factory.mktemp("tp-logs")
    single = start_server(logs, {"MODEL_PATH": str(tiny), "CPU_LINEAR": "torch", "TORCH_THREADS": "1"})
    split = start_server(logs, {"MODEL_PATH": str(tiny), **TP_ENV})
    yield single, split
    single.stop()
    assert split.stop() == 0
    assert "rank 1: rank 0 stopped" in split.log()  # the drain stopped rank 1 cleanly


def _generate(url: str, prompt: str, **parameters: object) -> dict:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 24, "details": True, **parameters}}
    r = requests.post(url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _token_ids(answer: dict) -> list[int]:
    return [t["id"] for t in answer["details"]["tokens"]]


def test_the_log_names_the_ranks_and_info_reports_them(servers: Pair) -> None:
    single, split = servers
    log = split.log()
    assert "rank 0 of 2 joined (gloo" in log and "rank 1 of 2 joined (gloo" in log
    assert requests.get(split.url + "/info", timeout=10).json()["tensor_parallel"] == 2
    assert requests.get(single.url + "/info", timeout=10).json()["tensor_parallel"] == 1


def test_greedy_tokens_match_one_process_alone_and_batched(servers: Pair) -> None:
    single, split = servers
    alone = {p: _token_ids(_generate(single.url, p)) for p in PROMPTS}
    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # all at once: one batch on the two ranks
        batched = dict(zip(PROMPTS, pool.map(lambda p: _token_ids(_generate(split.url, p)), PROMPTS),
                           strict=True))
    assert batched == alone
    assert all(len(ids) == 24 for ids in alone.values())


def test_chat_and_openai_streams_match_one_process(servers: Pair) -> None:
    single, split = servers
    body = {"prompt": "Tell me a story", "generate_kwargs": {"max_new_tokens": 20, "do_sample": False}}
    chats = [requests.post(s.url + "/chat", json=body, timeout=120).json()["Result"] for s in servers]
    assert chats[0] == chats[1] and len(chats[0]) > len("Tell me a story")

    def stream(url: str, question: str) -> str:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=120, max_retries=0)
        chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": question}],
                                                max_tokens=16, temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    client = openai.OpenAI(base_url=single.url + "/v1", api_key="unused", timeout=120, max_retries=0)
    questions = ["What is a tensor?", "Name a colour.", "Count to three."]
    expected = [client.chat.completions.create(model="m", messages=[{"role": "user", "content": q}],
                                               max_tokens=16, temperature=0).choices[0].message.content
                for q in questions]
    with ThreadPoolExecutor(len(questions)) as pool:
        streamed = list(pool.map(lambda q: stream(split.url, q), questions))
    assert streamed == expected


def test_the_exact_lane_and_speculative_drafts_run_on_both_ranks(
        servers: Pair) -> None:
    single, split = servers
    beams = {"prompt": "The quick brown fox",
             "generate_kwargs": {"max_new_tokens": 12, "num_beams": 3, "do_sample": False}}
    drafts = {"prompt": "a b c a b c a b c a b c",
              "generate_kwargs": {"max_new_tokens": 16, "do_sample": False, "prompt_lookup_num_tokens": 4}}
    for body in (beams, drafts):
        answers = [requests.post(s.url + "/chat", json=body, timeout=120) for s in servers]
        assert [a.status_code for a in answers] == [200, 200], answers[1].text
        assert answers[0].json() == answers[1].json()
    # a sampled exact call (bad words are exact-lane only): rank 1 follows rank 0's tokens, and the
    # server keeps serving after it
    sampled = {"prompt": "Hello", "generate_kwargs": {"max_new_tokens": 8, "do_sample": True,
                                                      "bad_words_ids": [[5]], "num_return_sequences": 2}}
    assert requests.post(split.url + "/chat", json=sampled, timeout=120).status_code == 200
    assert _token_ids(_generate(split.url, PROMPTS[0])) == _token_ids(_generate(single.url, PROMPTS[0]))


def test_prompt_logprobs_are_scored_on_both_ranks(servers: Pair) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 3, "echo": True, "logprobs": 1,
            "temperature": 0}
    answers = [requests.post(s.url + "/v1/completions", json=body, timeout=120).json() for s in servers]
    lps = [a["choices"][0]["logprobs"] for a in answers]
    assert lps[0]["tokens"] == lps[1]["tokens"]
    assert lps[0]["token_logprobs"][1:] == pytest.approx(lps[1]["token_logprobs"][1:], abs=1e-3)


def test_adapters_are_refused_with_the_reason(servers: Pair) -> None:
    _, split = servers
    r = requests.post(split.url + "/chat", json={"prompt": "hi", "adapter": "sql"}, timeout=30)
    assert r.status_code == 400
    assert "not served under tensor parallelism" in r.json()["detail"]
    r = requests.post(split.url + "/generate", json={"inputs": "hi", "parameters": {"adapter_id": "sql"}},
                      timeout=30)  # LoRAX's way to name one
    assert r.status_code == 400 and "not served under tensor parallelism" in r.text


def test_a_model_whose_heads_do_not_divide_is_refused(tmp_path: Path) -> None:
    model = build(tmp_path / "six-heads", heads=6, kv_heads=3, hidden=96, intermediate=192)
    env = {"MODEL_PATH": str(model), "TENSOR_PARALLEL": "2", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "does not divide num_key_value_heads=3" in done.stderr
    assert "sizes that work: 1, 3" in done.stderr


def test_a_rank_killed_mid_stream_gives_503s_and_an_exit(tiny: Path, tmp_path: Path) -> None:
    server = start_server(tmp_path, {"MODEL_PATH": str(tiny), **TP_ENV})
    try:
        pid = int(re.search(r"rank 1 of 2 \(pid (\d+)\): model loaded", server.log()).group(1))
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60, max_retries=0)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(requests.post, server.url + "/chat", timeout=60, json={
                "prompt": "Hello", "generate_kwargs": {"max_new_tokens": 1500, "min_new_tokens": 1500}})
            _wait_running(server.url, 1)  # the plain request is in the batch
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Go on"}], max_tokens=1500, temperature=0,
                stream=True, extra_body={"min_tokens": 1500})
            first = next(c for c in stream if c.choices and c.choices[0].delta.content)
            assert first.choices[0].delta.content
            subprocess.run(["kill", "-9", str(pid)], check=True)
            with pytest.raises(openai.APIError, match="tensor-parallel rank was lost"):
                for _ in stream:
                    pass
            answer = waiting.result()
        assert answer.status_code == 503 and "rank was lost" in answer.json()["detail"]
        assert server.proc.wait(timeout=60) != 0  # the whole server exits, so that it is restarted
    finally:
        server.stop(timeout=10)


def _wait_running(url: str, rows: int) -> None:
    """Until the engine reports `rows` running sequences (read from /metrics; no fixed sleep)."""
    for _ in range(600):
        text = requests.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=10).text
        if re.search(rf"^inferbox_running_batch_size {rows}\.0$", text, re.MULTILINE):
            return
    raise AssertionError(f"the engine never ran {rows} row(s)")
