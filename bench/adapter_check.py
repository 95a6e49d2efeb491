"""The adapter check of `make bench --adapters N`: does mixing LoRA adapters in one batch cost
throughput?

N real LoRA adapters (seeded, rank `--adapter-rank`, q_proj/v_proj; built with peft as the tests
build theirs) are put in a folder that a second server serves as ADAPTERS_DIR (DEFAULT_ADAPTER=base).
At c clients (default 8), `repeats` times in turn:
- `plain`: the run's main server (no adapters), every request on the base model;
- `spread`: the adapter server, request i on adapter i mod (N + 1), 0 being the base model (Kaito
  `/chat`'s `adapter`), so every decode step mixes adapters and base rows (peft's `adapter_names`);
- `base`: the adapter server, every request on the base model (what the LoRA layers cost alone).
Target: spread >= 0.8x plain (medians; per-pair ratios in the JSON).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.client import chat, throughput
from tools.adapters import make_adapters
from tools.local_server import start_server


def adapter_check(url: str, model: str, env: dict[str, str], log_dir: Path, n: int, rank: int,
                  clients: int, repeats: int, rounds: int, new_tokens: int) -> dict:
    folder = log_dir / f"adapters-{n}x{rank}"
    if not folder.is_dir():
        make_adapters(model, folder, n=n, ranks=(rank,), seed=7)
    srv = start_server(log_dir, {"MODEL_PATH": model, **env, "ADAPTERS_DIR": str(folder),
                                 "DEFAULT_ADAPTER": "base", "MAX_LOADED_ADAPTERS": str(n + 2)})
    names = [None] + [f"adapter{k}" for k in range(1, n + 1)]

    def spread(i: int) -> str | None:
        return names[i % len(names)] or "base"

    try:
        chat(srv.url, 0, 8, adapter="adapter1")  # warm-up
        runs: dict[str, list[float]] = {"plain": [], "spread": [], "base": []}
        for _ in range(repeats):
            runs["plain"].append(throughput(url, clients, rounds, new_tokens)["tokens_per_s"])
            runs["spread"].append(throughput(srv.url, clients, rounds, new_tokens, spread)["tokens_per_s"])
            runs["base"].append(throughput(srv.url, clients, rounds, new_tokens)["tokens_per_s"])
    finally:
        srv.stop()
    return {"adapters": n, "rank": rank, "clients": clients, "new_tokens": new_tokens,
            "runs_tokens_per_s": runs,
            **{f"{k}_tokens_per_s": statistics.median(v) for k, v in runs.items()},
            "pair_ratios": [s / p for s, p in zip(runs["spread"], runs["plain"], strict=True)]}


def adapter_table_lines(check: dict) -> list[str]:
    plain = check["plain_tokens_per_s"]
    pairs = check["pair_ratios"]
    ratio = check["spread_tokens_per_s"] / plain
    return [
        f"adapters: c={check['clients']}, {check['adapters']} adapters of rank {check['rank']} + base, "
        f"{check['new_tokens']} new tokens (medians of {len(pairs)})",
        f"{'requests':<34} | {'tok/s':>7} | {'vs plain':>8}",
        f"{'base only, server without adapters':<34} | {plain:>7.1f} | {1.0:>8.2f}",
        f"{'base only, server with adapters':<34} | {check['base_tokens_per_s']:>7.1f} | "
        f"{check['base_tokens_per_s'] / plain:>8.2f}",
        f"{'spread over adapters and base':<34} | {check['spread_tokens_per_s']:>7.1f} | {ratio:>8.2f}"
        f"  (pairs {min(pairs):.2f}-{max(pairs):.2f}; target >= 0.80 {'ok' if ratio >= 0.8 else 'SHORT'})",
    ]
