"""`make bench PRESET=all-minilm-l6-v2` (`python -m bench.embed [options]`): the embedding kind.

1. Reference: sentence-transformers' own `encode` in this process on the same model, at a batch as
   large as the number of clients (`--batch` sets another).
2. The real server (`python -m server`, PRESET=all-minilm-l6-v2): `--clients` closed-loop clients
   (default 32), each posting one sentence per request to `/v1/embeddings` (base64, as the openai
   SDK asks by default) and sending the next when the answer is in. Each client holds one keep-alive
   connection through the standard library's `http.client` (`--client requests` for `requests`,
   which costs the bench process about four times the CPU, taken from the server on a small machine).
The two alternate `--repeats` times (each idle while the other runs) for `--seconds` each, so both
sample the same stretch of machine load. Prints a table (sentences/s, the server's requests/s and
p50/p95 latency, their ratio with the per-pair range, mean rows per forward pass, and the share of
wall time the batch thread spent in `predict`) and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import requests

from tools.local_server import ROOT, start_server

RESULTS = ROOT / "bench" / "results"
MODEL = ROOT / "models" / "all-minilm-l6-v2"
WORDS = ("the quick brown fox jumps over a lazy dog while rivers of music and bread cross the quiet "
         "mountains of graph theory near volcanoes trains tea and the moon").split()


def sentence(i: int) -> str:
    """Sentences of 8 to 23 words, different for every i."""
    n = 8 + (i * 7) % 16
    return " ".join(WORDS[(i + k * 3) % len(WORDS)] for k in range(n)) + f" ({i})."


def reference_rate(model, batch: int, seconds: float) -> float:
    """Sentences/s of `encode` on batches of `batch` fresh sentences."""
    done, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        model.encode([sentence(i + k) for k in range(batch)], batch_size=batch)
        done += batch
        i += batch
    return done / (time.perf_counter() - start)


def steps(url: str) -> tuple[float, float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
    got = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("kind") == "predict" and s.name.startswith("inferbox_engine_step"):
                got[s.name] = s.value
    return (got.get("inferbox_engine_steps_total", 0.0), got.get("inferbox_engine_step_rows_total", 0.0),
            got.get("inferbox_engine_step_seconds_total", 0.0))


def poster(url: str, client: str) -> Callable[[dict], int]:
    """One keep-alive connection posting to /v1/embeddings; returns the status code. `http.client`
    (the standard library's) costs the bench process about 0.3 ms of CPU a request, `requests`
    about 1.1 ms; on a 2-core machine the load generator's CPU is taken from the server under test."""
    if client == "requests":
        session = requests.Session()
        return lambda body: session.post(url + "/v1/embeddings", json=body, timeout=300).status_code
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)

    def post(body: dict) -> int:
        conn.request("POST", "/v1/embeddings", json.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        return answer.status

    return post


def server_rate(url: str, clients: int, seconds: float, offset: int,
                client: str = "http.client") -> dict[str, float]:
    """Closed-loop clients for `seconds`: requests/s and latency percentiles (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    errors = []

    def run_client(k: int) -> None:
        post = poster(url, client)
        i = offset + k * 100_000
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            code = post({"model": "m", "input": sentence(i), "encoding_format": "base64"})
            if code != 200:
                errors.append(code)
                return
            with lock:
                latencies.append(time.perf_counter() - t)
            i += 1

    before = steps(url)
    start = time.perf_counter()
    threads = [threading.Thread(target=run_client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = steps(url)
    if errors:
        raise RuntimeError(f"the server answered {errors[:5]}")
    lat = sorted(latencies)
    forwards = after[0] - before[0]
    return {"requests_per_s": len(lat) / wall, "requests": len(lat),
            "p50_ms": 1000 * lat[len(lat) // 2], "p95_ms": 1000 * lat[int(len(lat) * 0.95)],
            "forwards": forwards, "rows_per_forward": (after[1] - before[1]) / forwards if forwards else 0.0,
            "busy_share": (after[2] - before[2]) / wall,
            "sentences_per_busy_s": (after[1] - before[1]) / max(after[2] - before[2], 1e-9)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.embed", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--clients", default="32", help="closed-loop clients; a comma list measures each")
    ap.add_argument("--batch", type=int, default=None,
                    help="the reference's encode batch size (default: the number of clients)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--client", choices=("http.client", "requests"), default="http.client",
                    help="the HTTP client library of the load generator")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    args = ap.parse_args(argv)
    from sentence_transformers import SentenceTransformer

    RESULTS.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in str(args.clients).split(",")]
    env = dict(e.split("=", 1) for e in args.env)
    srv = start_server(RESULTS, {"PRESET": "all-minilm-l6-v2", "MODEL_PATH": args.model, **env})
    levels = []
    try:
        model = SentenceTransformer(args.model, device="cpu", local_files_only=True)
        reference_rate(model, args.batch or max(counts), 1.0)  # warm both up
        server_rate(srv.url, max(counts), 2.0, 10_000_000, args.client)
        for clients in counts:
            batch = args.batch or clients
            pairs = []
            for r in range(args.repeats):
                ref = reference_rate(model, batch, args.seconds)
                got = server_rate(srv.url, clients, args.seconds, r * 1_000_000, args.client)
                pairs.append({"reference_sentences_per_s": ref, **got, "ratio": got["requests_per_s"] / ref})
                print(f"{clients} clients, repeat {r + 1}: encode {ref:.1f}/s, server "
                      f"{got['requests_per_s']:.1f} req/s (p50 {got['p50_ms']:.0f} ms, "
                      f"{got['rows_per_forward']:.1f} rows/forward, busy {got['busy_share']:.0%}), "
                      f"ratio {pairs[-1]['ratio']:.2f}", flush=True)
            med = {k: statistics.median(p[k] for p in pairs) for k in pairs[0]}
            levels.append({"clients": clients, "batch": batch, "repeats": pairs, "median": med,
                           "ratio_of_medians": med["requests_per_s"] / med["reference_sentences_per_s"]})
    finally:
        srv.stop()
    result = {"machine": platform.platform(), "model": args.model, "client": args.client,
              "seconds": args.seconds, "levels": levels}
    print(f"\nload generator: {args.client}, one keep-alive connection per client\n")
    print("| clients | server req/s | p50 ms | p95 ms | rows/forward | busy | encode batch "
          "| encode sentences/s | ratio (per-pair range) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for level in levels:
        med, ratios = level["median"], [p["ratio"] for p in level["repeats"]]
        print(f"| {level['clients']} | {med['requests_per_s']:.1f} | {med['p50_ms']:.0f} | "
              f"{med['p95_ms']:.0f} | "
              f"{med['rows_per_forward']:.1f} | {med['busy_share']:.0%} | {level['batch']} | "
              f"{med['reference_sentences_per_s']:.1f} | "
              f"{level['ratio_of_medians']:.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
    path = Path(RESULTS / f"bench-embed-{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
