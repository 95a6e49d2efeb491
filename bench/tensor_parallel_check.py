"""The tensor-parallel check (`make bench-tensor-parallel`, or `python -m bench.tensor_parallel_check`):
one model served by N ranks of T/N torch threads each, against one process of T threads.

The model is a random Llama shaped like SmolLM2-135M (576 wide, 30 layers, 1536 MLP) but with 8
attention heads and 4 KV heads, so that it splits over 2 ranks (SmolLM2's own 9 heads split over 3);
it is written once under bench/results/. Both servers get the same greedy completions, each forced
to `--tokens` tokens; at each concurrency (default c = 1 and 8), `--repeats` times, the two take the
same requests in turn, which goes first alternating. Tokens/s are completion tokens over wall time;
the answers must be identical. From the split server's /metrics: the broadcast rank 0 sends per
forward (its time per step, and its share of the decode step). There is no target on a CPU: the
ranks share one machine's cores and memory bandwidth, and every layer adds two all-reduces.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.client import closed_loop
from tools.local_server import ROOT, start_server
from tools.tiny_model import build

SHAPE = {"hidden": 576, "heads": 8, "kv_heads": 4, "layers": 30, "intermediate": 1536}
PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how bees make honey.",
           "List five uses for a paper clip.", "Describe the water cycle.",
           "What makes a good cup of tea?", "Summarize the history of the bicycle.",
           "Give advice to a new gardener.", "Why is the sky blue?"]


def model_dir(results: Path) -> Path:
    path = results / "tp-model-576x30-h8-kv4"
    if not (path / "config.json").is_file():
        build(path, **SHAPE)
    return path


def ask(url: str, i: int, tokens: int) -> tuple[int, str]:
    body = {"model": "m", "prompt": PROMPTS[i % len(PROMPTS)], "temperature": 0, "max_tokens": tokens,
            "min_tokens": tokens}
    r = requests.post(url + "/v1/completions", json=body, timeout=900)
    r.raise_for_status()
    out = r.json()
    return int(out["usage"]["completion_tokens"]), out["choices"][0]["text"]


def run_arm(url: str, clients: int, per_client: int, tokens: int) -> dict[str, Any]:
    return closed_loop(clients, per_client, lambda i: ask(url, i, tokens))


def counters(url: str) -> dict[str, float]:
    """Broadcast and decode-step counters so far, from /metrics."""
    wanted = {"inferbox_tensor_parallel_broadcast_seconds_sum": "broadcast_s",
              "inferbox_tensor_parallel_broadcast_seconds_count": "broadcasts"}
    out = dict.fromkeys([*wanted.values(), "decode_s", "decode_steps"], 0.0)
    text = requests.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted:
                out[wanted[s.name]] = s.value
            elif s.labels.get("kind") == "decode" and s.name == "inferbox_engine_step_seconds_total":
                out["decode_s"] = s.value
            elif s.labels.get("kind") == "decode" and s.name == "inferbox_engine_steps_total":
                out["decode_steps"] = s.value
    return out


def check(log_dir: Path, model: Path, ranks: int, threads: int, levels: list[int], repeats: int,
          per_client: int, tokens: int) -> list[dict[str, Any]]:
    servers = {}
    try:
        servers["one"] = start_server(log_dir, {"MODEL_PATH": str(model), "TORCH_THREADS": str(threads)})
        servers["split"] = start_server(log_dir, {"MODEL_PATH": str(model), "TENSOR_PARALLEL": str(ranks),
                                                  "TORCH_THREADS": str(max(1, threads // ranks))})
        for srv in servers.values():
            ask(srv.url, 0, 4)  # warm-up
        results = []
        for c in levels:
            runs: dict[str, list[dict[str, Any]]] = {"one": [], "split": []}
            before = counters(servers["split"].url)
            for rep in range(repeats):
                for name in (("one", "split") if rep % 2 == 0 else ("split", "one")):
                    runs[name].append(run_arm(servers[name].url, c, per_client, tokens))
            after = counters(servers["split"].url)
            delta = {k: after[k] - before[k] for k in after}
            mismatches = sum(a != b for o, s in zip(runs["one"], runs["split"], strict=True)
                             for a, b in zip(o["texts"].values(), s["texts"].values(), strict=True))
            results.append({"clients": c, "runs": runs, "split_counters": delta, "mismatches": mismatches})
        return results
    finally:
        for srv in servers.values():
            srv.stop()


def summarize(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for lv in levels:
        one = [r["tokens_per_s"] for r in lv["runs"]["one"]]
        split = [r["tokens_per_s"] for r in lv["runs"]["split"]]
        d = lv["split_counters"]
        out.append({
            "clients": lv["clients"], "one_tokens_per_s": statistics.median(one),
            "split_tokens_per_s": statistics.median(split),
            "ratio": statistics.median(split) / statistics.median(one),
            "pair_ratios": [s / o for s, o in zip(split, one, strict=True)],
            "broadcast_ms": 1000 * d["broadcast_s"] / d["broadcasts"] if d["broadcasts"] else 0.0,
            "decode_step_ms": 1000 * d["decode_s"] / d["decode_steps"] if d["decode_steps"] else 0.0,
            "broadcast_share": d["broadcast_s"] / d["decode_s"] if d["decode_s"] else 0.0,
            "mismatches": lv["mismatches"],
        })
    return out


def table_lines(summary: list[dict[str, Any]], ranks: int, threads: int) -> list[str]:
    lines = [f"tensor parallel: {ranks} ranks x {max(1, threads // ranks)} thread(s) vs 1 process x "
             f"{threads} "
             f"thread(s), random Llama {SHAPE}",
             f"{'clients':>7} | {'1 proc':>7} | {f'{ranks} ranks':>7} | {'ratio':>5} | {'pairs':>9} | "
             f"{'bcast ms':>8} | {'step ms':>7} | {'bcast %':>7} | diff"]
    for s in summary:
        pairs = s["pair_ratios"]
        lines.append(f"{s['clients']:>7} | {s['one_tokens_per_s']:>7.1f} | {s['split_tokens_per_s']:>7.1f} | "
                     f"{s['ratio']:>5.2f} | {min(pairs):.2f}-{max(pairs):.2f} | {s['broadcast_ms']:>8.3f} | "
                     f"{s['decode_step_ms']:>7.1f} | {s['broadcast_share']:>7.1%} | {s['mismatches']}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads of the one process; each rank gets threads / ranks")
    ap.add_argument("--levels", default="1,8", help="comma-separated client counts")
    ap.add_argument("--repeats", type=int, default=3, help="alternating pairs of runs per level")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--tokens", type=int, default=64, help="completion tokens per request (forced)")
    args = ap.parse_args(argv)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.levels.split(",") if c]
    raw = check(results, model_dir(results), args.ranks, args.threads, levels, args.repeats, args.requests,
                args.tokens)
    summary = summarize(raw)
    path = results / f"tensor-parallel-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"ranks": args.ranks, "threads": args.threads, "shape": SHAPE,
                                "tokens": args.tokens, "summary": summary, "levels": raw}, indent=1))
    print("\n".join(table_lines(summary, args.ranks, args.threads)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
