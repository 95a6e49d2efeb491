"""The structured check of `make bench BENCH_ARGS="--structured"` (or alone:
`python -m bench.structured_check`): what does enforcing a JSON schema cost a batch?

On one server, at each concurrency c (default 1, 8, 32), `repeats` times, c closed-loop clients
send OpenAI chat requests (greedy, the same prompts) in two arms, alternating which goes first:
- `plain`: unconstrained, exactly N new tokens (`min_tokens` = `max_tokens` = N);
- `structured`: every request under one JSON schema (`response_format` json_schema, strict),
  `max_tokens` = N. A constraint decides where its output may end (the engine ignores `min_tokens`
  for constrained rows), so the schema's last field is a string with a `minLength` well beyond N
  tokens: every request runs to N tokens too, and the table shows both arms' tokens per request.
Tokens/s are `usage.completion_tokens` over wall time. The mask time per step (filling, applying
and advancing the masks of all of a step's constrained rows) comes from the /metrics deltas of
`inferbox_constraint_mask_seconds` over the structured arms, next to the mean decode step.
Target: structured >= 0.9x plain at c = 8 (medians; per-pair ratios in the JSON), with the two arms'
tokens per request within 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.workload import TOPICS
from tools.local_server import MODEL_DIR, ROOT, start_server

TARGET_RATIO = 0.9
TARGET_CLIENTS = 8
TOKENS_TOLERANCE = 0.1

# str, int, enum and array fields first; then a string that cannot close before max_tokens.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "year": {"type": "integer"},
        "category": {"type": "string", "enum": ["science", "history", "nature", "technology"]},
        "keywords": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
        "description": {"type": "string", "minLength": 2000},
    },
    "required": ["title", "year", "category", "keywords", "description"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: dict[str, Any] = {"type": "json_schema",
                                   "json_schema": {"name": "topic", "schema": SCHEMA, "strict": True}}
ARMS = ("plain", "structured")

# /metrics samples a level reads (before and after each arm)
_MASK_SUM = "inferbox_constraint_mask_seconds_sum"
_MASK_COUNT = "inferbox_constraint_mask_seconds_count"
_MASK_ROWS = "inferbox_constraint_mask_rows_total"
_DECODE_STEPS = "inferbox_engine_steps_total:decode"
_DECODE_SECONDS = "inferbox_engine_step_seconds_total:decode"


def request_body(i: int, new_tokens: int, structured: bool) -> dict[str, Any]:
    """Request i of an arm: the same prompt in both arms, so prefill work is equal too."""
    topic = TOPICS[i % len(TOPICS)]
    prompt = (f"Describe {topic} as a JSON object with a title, a year, a category, up to three keywords "
              "and a long, detailed description of several paragraphs.")
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": new_tokens,
                            "temperature": 0}
    if structured:
        body["response_format"] = RESPONSE_FORMAT
    else:
        body["min_tokens"] = new_tokens
    return body


def completion(url: str, body: dict[str, Any]) -> tuple[int, str]:
    """One OpenAI chat completion: its completion tokens and finish reason."""
    resp = requests.post(url + "/v1/chat/completions", json=body, timeout=900)
    resp.raise_for_status()
    answer = resp.json()
    return int(answer["usage"]["completion_tokens"]), str(answer["choices"][0]["finish_reason"])


def parse_counters(text: str) -> dict[str, float]:
    """The samples the check needs from a /metrics text (engine step series as `<name>:<kind>`)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (_MASK_SUM, _MASK_COUNT, _MASK_ROWS):
                out[sample.name] = sample.value
            elif sample.name.startswith("inferbox_engine_step") and sample.name.endswith("_total"):
                out[f"{sample.name}:{sample.labels.get('kind', '')}"] = sample.value
    return out


def counters(url: str) -> dict[str, float]:
    text = requests.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
    return parse_counters(text)


def mask_profile(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mask work between two /metrics reads: masked steps, ms per masked step, constrained rows
    per masked step, and the mean decode step (ms) for scale."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    steps = d.get(_MASK_COUNT, 0.0)
    decode = d.get(_DECODE_STEPS, 0.0)
    return {"mask_steps": steps, "mask_seconds": d.get(_MASK_SUM, 0.0),
            "mask_ms_per_step": 1000 * d.get(_MASK_SUM, 0.0) / steps if steps else 0.0,
            "mask_rows_per_step": d.get(_MASK_ROWS, 0.0) / steps if steps else 0.0,
            "decode_steps": decode,
            "decode_ms_per_step": 1000 * d.get(_DECODE_SECONDS, 0.0) / decode if decode else 0.0}


def run_arm(url: str, clients: int, rounds: int, new_tokens: int, structured: bool) -> dict[str, Any]:
    """c closed-loop clients, `rounds` requests each; tokens/s from the reported completion tokens."""
    tokens: list[int] = []
    finish: dict[str, int] = {}
    before = counters(url)

    def client(k: int) -> None:
        for r in range(rounds):
            n, reason = completion(url, request_body(k + r * clients, new_tokens, structured))
            tokens.append(n)
            finish[reason] = finish.get(reason, 0) + 1

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    return {"requests": len(tokens), "tokens": sum(tokens), "wall_s": wall,
            "tokens_per_s": sum(tokens) / wall, "tokens_per_request": sum(tokens) / len(tokens),
            "finish_reasons": finish, **mask_profile(before, counters(url))}


def summarize_level(clients: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians of each arm, per-pair ratios, and the mask time over all structured runs."""
    masked = [r for r in runs["structured"] if r["mask_steps"]]
    steps = sum(r["mask_steps"] for r in masked)
    decode = sum(r["decode_steps"] for r in runs["structured"])
    out: dict[str, Any] = {"clients": clients, "runs": runs,
                           "pair_ratios": [s["tokens_per_s"] / p["tokens_per_s"]
                                           for p, s in zip(runs["plain"], runs["structured"], strict=True)],
                           "mask_steps": steps,
                           "mask_ms_per_step": 1000 * sum(r["mask_seconds"] for r in masked) / steps
                           if steps else 0.0,
                           "mask_rows_per_step": sum(r["mask_rows_per_step"] * r["mask_steps"]
                                                     for r in masked) / steps if steps else 0.0,
                           "decode_ms_per_step": sum(r["decode_ms_per_step"] * r["decode_steps"]
                                                     for r in runs["structured"]) / decode if decode else 0.0}
    for arm in ARMS:
        out[f"{arm}_tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in runs[arm])
        out[f"{arm}_tokens_per_request"] = statistics.mean(r["tokens_per_request"] for r in runs[arm])
    out["ratio"] = out["structured_tokens_per_s"] / out["plain_tokens_per_s"]
    out["tokens_gap"] = (abs(out["structured_tokens_per_request"] - out["plain_tokens_per_request"])
                         / out["plain_tokens_per_request"])
    return out


def structured_check(url: str, levels: list[int], repeats: int, rounds: int, sequential: int,
                     new_tokens: int) -> dict[str, Any]:
    """Both arms at each level, `repeats` times, alternating which arm goes first (A/B, B/A...)."""
    completion(url, request_body(0, 8, True))  # warm-up (and compile the schema once)
    out: dict[str, Any] = {"new_tokens": new_tokens, "schema": SCHEMA, "levels": []}
    for c in levels:
        runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
        for rep in range(repeats):
            for arm in ARMS if rep % 2 == 0 else ARMS[::-1]:
                runs[arm].append(run_arm(url, c, sequential if c == 1 else rounds, new_tokens,
                                         arm == "structured"))
        level = summarize_level(c, runs)
        out["levels"].append(level)
        print(f"  c={c}: plain {[round(r['tokens_per_s']) for r in runs['plain']]} tok/s, structured "
              f"{[round(r['tokens_per_s']) for r in runs['structured']]} tok/s, mask "
              f"{level['mask_ms_per_step']:.2f} ms/step", flush=True)
    return out


def structured_table_lines(check: dict[str, Any]) -> list[str]:
    lines = [f"structured: one JSON schema (response_format, strict) vs unconstrained, {check['new_tokens']} "
             f"max new tokens; tok/s medians; mask = ms per step over all constrained rows",
             f"{'clients':>7} | {'plain tok/s':>11} | {'struct tok/s':>12} | {'ratio':>5} | {'pairs':>9} | "
             f"{'tok/req p/s':>11} | {'mask ms/step':>12} | {'rows/step':>9} | {'decode ms':>9} | target"]
    for lv in check["levels"]:
        pairs = lv["pair_ratios"]
        target = ""
        if lv["clients"] == TARGET_CLIENTS:
            ok = lv["ratio"] >= TARGET_RATIO and lv["tokens_gap"] <= TOKENS_TOLERANCE
            target = (f">= {TARGET_RATIO:.2f}, tok/req within {TOKENS_TOLERANCE:.0%} "
                      f"{'ok' if ok else 'SHORT'}")
        counts = f"{lv['plain_tokens_per_request']:.0f}/{lv['structured_tokens_per_request']:.0f}"
        lines.append(f"{lv['clients']:>7} | {lv['plain_tokens_per_s']:>11.1f} | "
                     f"{lv['structured_tokens_per_s']:>12.1f} | {lv['ratio']:>5.2f} | "
                     f"{min(pairs):.2f}-{max(pairs):.2f} | {counts:>11} | {lv['mask_ms_per_step']:>12.3f} | "
                     f"{lv['mask_rows_per_step']:>9.1f} | {lv['decode_ms_per_step']:>9.1f} | {target}")
    return lines


def main(argv: list[str] | None = None) -> None:
    """The check alone, on a server of its own (without `make bench`'s bare and kernel parts)."""
    ap = argparse.ArgumentParser(prog="python -m bench.structured_check", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client at c > 1")
    ap.add_argument("--sequential", type=int, default=4, help="requests at c = 1")
    ap.add_argument("--repeats", type=int, default=3, help="plain/structured alternations per level")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    args = ap.parse_args(argv)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    env = dict(kv.split("=", 1) for kv in args.env)
    srv = start_server(results, {"MODEL_PATH": args.model, **env})
    try:
        check = structured_check(srv.url, [int(c) for c in args.levels.split(",") if c], args.repeats,
                                 args.rounds, args.sequential, args.new_tokens)
    finally:
        srv.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results / f"structured-{stamp}.json"
    path.write_text(json.dumps({"time": stamp, "model": args.model, "cpus": os.cpu_count(),
                                "load_after": os.getloadavg(), "server_env": env, "structured": check},
                               indent=2))
    print("\n".join(structured_table_lines(check)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
