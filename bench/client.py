"""The bench's HTTP client: the `/chat` requests every bench sends, closed-loop load at c clients,
and the engine's step counters read from /metrics (`make bench`, the kernel and adapter checks)."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.workload import generate_kwargs, messages


def chat(url: str, i: int, new_tokens: int, adapter: str | None = None) -> None:
    body = {"messages": messages(i), "generate_kwargs": generate_kwargs(new_tokens)}
    if adapter is not None:
        body["adapter"] = adapter  # Kaito /chat's adapter (an inferbox extension)
    resp = requests.post(url + "/chat", json=body, timeout=900)
    resp.raise_for_status()


def stream_ttft(url: str, i: int, new_tokens: int) -> tuple[float, int]:
    """Seconds to the first streamed text, and the completion tokens the final event reports."""
    body = {"messages": messages(i), "generate_kwargs": generate_kwargs(new_tokens), "stream": True}
    start = time.perf_counter()
    first = None
    tokens = 0
    with requests.post(url + "/chat", json=body, stream=True, timeout=900) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines(decode_unicode=True):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if first is None and event.get("text"):
                first = time.perf_counter() - start
            tokens = event.get("completion_tokens", tokens)
    return (first if first is not None else time.perf_counter() - start), tokens


def engine_counters(url: str) -> dict[str, float]:
    """The engine's step counters from /metrics: `<series>:<kind>` -> value."""
    text = requests.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("inferbox_engine_step") and sample.name.endswith("_total"):
                out[f"{sample.name}:{sample.labels['kind']}"] = sample.value
    return out


def engine_profile(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """What the engine did during a level: forwards, mean rows per forward, share of wall time busy."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    prof: dict[str, float] = {}
    for kind in ("prefill", "decode"):
        steps = d.get(f"inferbox_engine_steps_total:{kind}", 0.0)
        prof[f"{kind}_steps"] = steps
        rows = d.get(f"inferbox_engine_step_rows_total:{kind}", 0.0)
        prof[f"{kind}_mean_rows"] = rows / steps if steps else 0.0
        prof[f"{kind}_busy"] = d.get(f"inferbox_engine_step_seconds_total:{kind}", 0.0) / wall
    return prof


def throughput(url: str, clients: int, rounds: int, new_tokens: int,
               adapter_of: Callable[[int], str | None] | None = None) -> dict[str, float]:
    """c closed-loop clients, `rounds` requests each; tokens/s over the whole wall time. Request i
    uses the adapter `adapter_of(i)` (default: none named)."""
    latencies: list[float] = []
    before = engine_counters(url)

    def client(k: int) -> None:
        for r in range(rounds):
            t = time.perf_counter()
            i = k + r * clients
            chat(url, i, new_tokens, adapter_of(i) if adapter_of else None)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    tokens = clients * rounds * new_tokens
    return {"clients": clients, "requests": clients * rounds, "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "latency_p50_s": statistics.median(latencies),
            "engine": engine_profile(before, engine_counters(url), wall)}


def ttft_under_load(url: str, clients: int, probes: int, new_tokens: int) -> list[float]:
    """TTFT of streamed probe requests sent one after another while `clients` keep the engine busy."""
    stop = threading.Event()

    def background(k: int) -> None:
        r = 0
        while not stop.is_set():
            chat(url, 100 + k + r * clients, new_tokens)
            r += 1

    pool = ThreadPoolExecutor(clients)
    futures = [pool.submit(background, k) for k in range(clients)]
    try:
        time.sleep(2.0)  # let the batch fill
        return [stream_ttft(url, 200 + i, new_tokens)[0] for i in range(probes)]
    finally:
        stop.set()
        for f in futures:
            f.result()
        pool.shutdown()


def closed_loop(clients: int, per_client: int, ask: Callable[[int], tuple[int, str]]) -> dict[str, Any]:
    """`clients` closed-loop clients, `per_client` requests each; request i (the same i in every
    arm of a check) is `ask(i)`, which returns its completion tokens and text. Tokens/s over the
    whole wall time; the texts by request, for comparing arms."""
    answers: dict[int, tuple[int, str]] = {}

    def client(k: int) -> None:
        for r in range(per_client):
            i = k + r * clients
            answers[i] = ask(i)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    tokens = sum(n for n, _ in answers.values())
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "texts": {i: t for i, (_, t) in sorted(answers.items())}}
