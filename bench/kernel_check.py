"""The CPU kernel check of `make bench`: the server (CPU_LINEAR as configured, `auto` by default)
next to the same server pinned to one kernel (`CPU_LINEAR=torch`, `CPU_LINEAR=onednn`).

1. A plain single request (non-streaming `/chat`, N new tokens), alternated with a `torch` server
   `runs` times: median latencies and the per-pair ratios.
2. Tokens/s at small concurrencies (default c = 1, 2, 4) on the three servers in turn, `repeats`
   times: the server against the faster of the two pinned kernels, per pair.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.client import chat, throughput
from bench.workload import generate_kwargs, messages
from tools.local_server import start_server


def _latency(url: str, i: int, new_tokens: int) -> float:
    import requests

    body = {"messages": messages(i), "generate_kwargs": generate_kwargs(new_tokens)}
    start = time.perf_counter()
    requests.post(url + "/chat", json=body, timeout=900).raise_for_status()
    return time.perf_counter() - start


def kernel_check(url: str, model: str, env: dict[str, str], log_dir: Path, levels: list[int],
                 repeats: int, rounds: int, new_tokens: int, runs: int) -> dict:

    pinned = {}
    try:
        for kernel in ("torch", "onednn"):
            pinned[kernel] = start_server(log_dir, {"MODEL_PATH": model, **env, "CPU_LINEAR": kernel})
            chat(pinned[kernel].url, 0, 8)  # warm-up
        urls = {"server": url, **{k: p.url for k, p in pinned.items()}}
        single = {"server": [], "torch": []}
        for i in range(runs):
            for name in single:
                single[name].append(_latency(urls[name], 400 + i, new_tokens))
        out: dict = {"single_request": {
            "new_tokens": new_tokens, "runs_s": single,
            "server_p50_s": statistics.median(single["server"]),
            "torch_p50_s": statistics.median(single["torch"]),
            "pair_ratios": [t / s for s, t in zip(single["server"], single["torch"], strict=True)],
        }, "levels": []}
        for c in levels:
            runs_tps: dict[str, list[float]] = {name: [] for name in urls}
            for _ in range(repeats):
                for name, u in urls.items():
                    runs_tps[name].append(throughput(u, c, rounds, new_tokens)["tokens_per_s"])
            best = [max(t, o) for t, o in zip(runs_tps["torch"], runs_tps["onednn"], strict=True)]
            out["levels"].append({
                "clients": c, "runs_tokens_per_s": runs_tps,
                **{f"{name}_tokens_per_s": statistics.median(v) for name, v in runs_tps.items()},
                "pair_ratios": [s / b for s, b in zip(runs_tps["server"], best, strict=True)],
            })
        return out
    finally:
        for p in pinned.values():
            p.stop()


def kernel_table_lines(check: dict) -> list[str]:
    s = check["single_request"]
    ratio = s["torch_p50_s"] / s["server_p50_s"]
    pairs = s["pair_ratios"]
    lines = [f"single request, {s['new_tokens']} tokens (median of {len(pairs)}): server "
             f"{s['server_p50_s']:.2f} s, CPU_LINEAR=torch {s['torch_p50_s']:.2f} s; speed ratio "
             f"{ratio:.2f} (pairs {min(pairs):.2f}-{max(pairs):.2f}; target >= 1.00 "
             f"{'ok' if ratio >= 1 else 'SHORT'})",
             f"{'clients':>7} | {'server':>7} | {'torch':>7} | {'onednn':>7} | {'vs faster':>9} | "
             f"{'pairs':>9} | target"]
    for lv in check["levels"]:
        best = max(lv["torch_tokens_per_s"], lv["onednn_tokens_per_s"])
        ratio = lv["server_tokens_per_s"] / best
        pairs = lv["pair_ratios"]
        lines.append(f"{lv['clients']:>7} | {lv['server_tokens_per_s']:>7.1f} | "
                     f"{lv['torch_tokens_per_s']:>7.1f} | {lv['onednn_tokens_per_s']:>7.1f} | "
                     f"{ratio:>9.2f} | {min(pairs):.2f}-{max(pairs):.2f}"
                     f" | >= 1.00 {'ok' if ratio >= 1 else 'SHORT'}")
    return lines
