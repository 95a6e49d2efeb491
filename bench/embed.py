"""`make bench PRESET=all-minilm-l6-v2` (`python -m bench.embed [options]`): the embedding kind.

1. Reference: sentence-transformers' own `encode` in this process, batch 32, on the same model.
2. The real server (`python -m server`, PRESET=all-minilm-l6-v2): `--clients` closed-loop clients
   (default 32), each posting one sentence per request to `/v1/embeddings` (base64, as the openai
   SDK asks by default) and sending the next when the answer is in.
The two alternate `--repeats` times (each idle while the other runs) for `--seconds` each, so both
sample the same stretch of machine load. Prints a table (sentences/s, the server's requests/s and
p50/p95 latency, their ratio with the per-pair range, mean rows per forward pass, and the share of
wall time the batch thread spent in `predict`) and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
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


def server_rate(url: str, clients: int, seconds: float, offset: int) -> dict[str, float]:
    """Closed-loop clients for `seconds`: requests/s and latency percentiles (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    errors = []

    def client(k: int) -> None:
        s = requests.Session()
        i = offset + k * 100_000
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            r = s.post(url + "/v1/embeddings", json={"model": "m", "input": sentence(i),
                                                     "encoding_format": "base64"}, timeout=300)
            if r.status_code != 200:
                errors.append(r.status_code)
                return
            with lock:
                latencies.append(time.perf_counter() - t)
            i += 1

    before = steps(url)
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
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
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32, help="the reference's encode batch size")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    args = ap.parse_args(argv)
    from sentence_transformers import SentenceTransformer

    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(e.split("=", 1) for e in args.env)
    srv = start_server(RESULTS, {"PRESET": "all-minilm-l6-v2", "MODEL_PATH": args.model, **env})
    try:
        model = SentenceTransformer(args.model, device="cpu", local_files_only=True)
        reference_rate(model, args.batch, 1.0)  # warm both up
        server_rate(srv.url, args.clients, 2.0, 10_000_000)
        pairs = []
        for r in range(args.repeats):
            ref = reference_rate(model, args.batch, args.seconds)
            srv_level = server_rate(srv.url, args.clients, args.seconds, r * 1_000_000)
            pairs.append({"reference_sentences_per_s": ref, **srv_level,
                          "ratio": srv_level["requests_per_s"] / ref})
            print(f"repeat {r + 1}: encode {ref:.1f}/s, server {srv_level['requests_per_s']:.1f} req/s "
                  f"(p50 {srv_level['p50_ms']:.0f} ms, {srv_level['rows_per_forward']:.1f} rows/forward, "
                  f"busy {srv_level['busy_share']:.0%}), ratio {pairs[-1]['ratio']:.2f}", flush=True)
    finally:
        srv.stop()
    med = {k: statistics.median(p[k] for p in pairs) for k in pairs[0]}
    ratios = [p["ratio"] for p in pairs]
    result = {"machine": platform.platform(), "model": args.model, "clients": args.clients,
              "batch": args.batch, "seconds": args.seconds, "repeats": pairs, "median": med,
              "ratio_of_medians": med["requests_per_s"] / med["reference_sentences_per_s"]}
    print()
    print("| clients | server req/s | p50 ms | p95 ms | rows/forward | busy | encode (batch "
          f"{args.batch}) sentences/s | ratio (per-pair range) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.clients} | {med['requests_per_s']:.1f} | {med['p50_ms']:.0f} | {med['p95_ms']:.0f} | "
          f"{med['rows_per_forward']:.1f} | {med['busy_share']:.0%} | "
          f"{med['reference_sentences_per_s']:.1f} | "
          f"{result['ratio_of_medians']:.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
    path = Path(RESULTS / f"bench-embed-{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
