"""`make soak`: drive a server at twice its capacity for a bounded time and report what came back.

Starts its own server (gunicorn, the embedded model, a free loopback port) with an API key and a
small queue, runs 2 x (MAX_BATCH_SIZE + MAX_QUEUED_REQUESTS) closed-loop clients for `--duration`
seconds, then prints every status code seen, latency percentiles per status, tokens/s, and the
worker's RSS when idle before and after. Writes JSON under bench/results/. Exits 1 if any request
failed without an HTTP answer or got a 5xx other than 503, or if the server ends unhealthy.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter, defaultdict

import psutil
import requests

from tools.local_server import ROOT, start_server

KEY = "soak-key"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    ap.add_argument("--batch", type=int, default=8, help="MAX_BATCH_SIZE of the server")
    ap.add_argument("--queue", type=int, default=8, help="MAX_QUEUED_REQUESTS of the server")
    ap.add_argument("--clients", type=int, default=0, help="default: 2 x (batch + queue)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--retry-cap", type=float, default=1.0,
                    help="longest Retry-After a client honours before trying again (seconds)")
    ap.add_argument("--rate-limit", default="", help="RATE_LIMIT for the server (default: none)")
    args = ap.parse_args()
    clients = args.clients or 2 * (args.batch + args.queue)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = {"API_KEYS": KEY, "MAX_BATCH_SIZE": str(args.batch), "MAX_QUEUED_REQUESTS": str(args.queue),
           "THREADS": str(max(64, clients + 8)), "REQUEST_TIMEOUT_S": "120"}
    if args.rate_limit:
        env["RATE_LIMIT"] = args.rate_limit
    srv = start_server(out_dir, env)
    url, log_path = srv.url, srv.log_path
    worker = psutil.Process(srv.proc.pid).children()[0]
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "Write a short story about a lighthouse keeper.",
            "generate_kwargs": {"max_new_tokens": args.max_new_tokens, "min_new_tokens": args.max_new_tokens,
                                "do_sample": True}}
    try:
        for _ in range(2):  # warm up
            requests.post(url + "/chat", json=body, headers=headers, timeout=300).raise_for_status()
        rss_idle = worker.memory_info().rss
        statuses: Counter[str] = Counter()
        latencies: dict[str, list[float]] = defaultdict(list)
        lock = threading.Lock()
        stop_at = time.monotonic() + args.duration
        peak_rss = [rss_idle]

        def client() -> None:
            session = requests.Session()
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                retry_after = 0.0
                try:
                    r = session.post(url + "/chat", json=body, headers=headers, timeout=200)
                    key = str(r.status_code)
                    retry_after = float(r.headers.get("Retry-After") or 0)
                except requests.RequestException as exc:
                    key = f"error:{type(exc).__name__}"
                dt = time.monotonic() - t0
                with lock:
                    statuses[key] += 1
                    latencies[key].append(dt)
                if key in ("503", "429"):  # a well-behaved client honours Retry-After (capped here)
                    time.sleep(min(retry_after, args.retry_cap))

        def sample_rss() -> None:
            while time.monotonic() < stop_at:
                peak_rss[0] = max(peak_rss[0], worker.memory_info().rss)
                time.sleep(0.5)

        t_start = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        threads.append(threading.Thread(target=sample_rss))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t_start
        time.sleep(2)
        rss_after = worker.memory_info().rss
        healthy = requests.get(url + "/health", timeout=10).status_code == 200
    finally:
        srv.stop()

    ok = statuses.get("200", 0)
    report = {
        "clients": clients, "duration_s": round(wall, 1), "batch": args.batch, "queue": args.queue,
        "max_new_tokens": args.max_new_tokens,
        "statuses": dict(sorted(statuses.items())),
        "latency_s": {k: {"p50": _percentile(v, 0.5), "p90": _percentile(v, 0.9), "p99": _percentile(v, 0.99),
                          "max": max(v)} for k, v in sorted(latencies.items())},
        "generated_tokens_per_s": ok * args.max_new_tokens / wall,
        "worker_rss_mib": {"idle_before": rss_idle / 2**20, "peak": peak_rss[0] / 2**20,
                           "idle_after": rss_after / 2**20},
        "healthy_after": healthy,
    }
    capacity = args.batch + args.queue
    print(f"soak: {clients} clients for {wall:.0f}s against batch {args.batch} + queue {args.queue} "
          f"({clients / capacity:.1f}x capacity), {args.max_new_tokens} new tokens per request")
    print(f"{'status':>24} {'count':>7} {'p50 s':>8} {'p90 s':>8} {'p99 s':>8} {'max s':>8}")
    for k, v in report["latency_s"].items():
        print(f"{k:>24} {statuses[k]:>7} {v['p50']:>8.2f} {v['p90']:>8.2f} {v['p99']:>8.2f} {v['max']:>8.2f}")
    rss = report["worker_rss_mib"]
    print(f"generated tokens/s: {report['generated_tokens_per_s']:.1f}; worker RSS idle "
          f"{rss['idle_before']:.0f} MiB -> peak {rss['peak']:.0f} MiB -> "
          f"idle after {rss['idle_after']:.0f} MiB; healthy after: {healthy}")
    out = out_dir / f"soak-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out} (server log {log_path})")
    bad = [k for k in statuses if k.startswith("error:") or (k.startswith("5") and k != "503")]
    return 1 if bad or not healthy or ok == 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
