"""The speculative-decoding check (`make bench-speculative`, or `python -m bench.speculative_check`):
prompt-lookup drafts on an input-grounded workload, against the same server without them.

Two servers on the same model: `plain`, and `speculative` (`SPECULATIVE_NGRAM_TOKENS=k`). The
workload is what drafting is for: "repeat this paragraph with one word changed" and "summarise
this text", over a few paragraphs, greedy (OpenAI chat, temperature 0), each answer ending on its
own (EOS) or at `max_tokens`. At each concurrency (default c = 1 and 8), `repeats` times, the two
servers take the same requests in turn (each idle while the other runs, which goes first
alternating); tokens/s are `usage.completion_tokens` over wall time. Greedy decoding with drafts
is exact, so both arms must return the same text: the check counts any difference. Acceptance
(accepted / drafted tokens) comes from the speculative server's /metrics.
Targets (the issue's): c = 1 >= 1.8x plain, c = 8 >= 0.95x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.client import closed_loop
from tools.local_server import MODEL_DIR, ROOT, start_server

TARGETS = {1: 1.8, 8: 0.95}
PARAGRAPHS = [
    ("The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of storms. "
     "Every evening the keeper climbed the spiral stairs, trimmed the wick, and watched the ships pass "
     "safely through the narrow channel below, while the gulls circled and the waves broke on the rocks.",
     "white", "red"),
    ("Our team released version two of the billing service on Tuesday. The new release moves invoices to "
     "a queue, retries failed payments three times, and sends a summary email to each customer at the "
     "end of the month. Latency fell by a third, and support tickets about duplicate charges stopped.",
     "Tuesday", "Friday"),
    ("Honey bees live in colonies of up to sixty thousand workers, one queen and a few hundred drones. "
     "The workers gather nectar and pollen, build the wax comb, and cool the hive by fanning their wings. "
     "In winter the colony clusters together and shivers to keep the queen warm until spring.",
     "sixty", "eighty"),
    ("The city council approved a plan to plant four thousand trees along the river over the next five "
     "years. The trees will shade the walking path, reduce flooding after heavy rain, and give birds a "
     "place to nest. Volunteers can sign up at the library to help with planting days each spring.",
     "four", "nine"),
]


def prompt(i: int) -> str:
    text, old, new = PARAGRAPHS[(i // 2) % len(PARAGRAPHS)]
    if i % 2 == 0:
        return f"Repeat this paragraph word for word, but replace the word '{old}' with '{new}':\n\n{text}"
    return f"Summarize this text in two sentences:\n\n{text}"


def ask(url: str, i: int, max_tokens: int) -> tuple[int, str]:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt(i)}], "temperature": 0,
            "max_tokens": max_tokens}
    r = requests.post(url + "/v1/chat/completions", json=body, timeout=900)
    r.raise_for_status()
    out = r.json()
    return int(out["usage"]["completion_tokens"]), out["choices"][0]["message"]["content"]


def run_arm(url: str, clients: int, requests_per_client: int, max_tokens: int) -> dict[str, Any]:
    """`clients` closed-loop clients; request i is the same prompt in both arms."""
    return closed_loop(clients, requests_per_client, lambda i: ask(url, i, max_tokens))


def draft_counters(url: str) -> tuple[float, float]:
    """(drafted, accepted) tokens so far, from /metrics."""
    names = ("inferbox_speculative_drafted_tokens_total", "inferbox_speculative_accepted_tokens_total")
    values = dict.fromkeys(names, 0.0)
    text = requests.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] = sample.value
    return values[names[0]], values[names[1]]


def summarize(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level: medians, their ratio, per-pair ratios, acceptance and text mismatches."""
    out = []
    for lv in levels:
        plain = [r["tokens_per_s"] for r in lv["runs"]["plain"]]
        spec = [r["tokens_per_s"] for r in lv["runs"]["speculative"]]
        drafted, accepted = lv["drafted"], lv["accepted"]
        first = lv["runs"]["plain"][0]
        ratio = statistics.median(spec) / statistics.median(plain)
        target = TARGETS.get(lv["clients"])
        out.append({
            "clients": lv["clients"], "plain_tokens_per_s": statistics.median(plain),
            "speculative_tokens_per_s": statistics.median(spec), "ratio": ratio,
            "pair_ratios": [s / p for s, p in zip(spec, plain, strict=True)],
            "acceptance": accepted / drafted if drafted else 0.0, "drafted": drafted, "accepted": accepted,
            "tokens_per_request": first["tokens"] / max(1, len(first["texts"])),
            "mismatches": lv["mismatches"], "target": target,
            "meets_target": None if target is None else ratio >= target,
        })
    return out


def table_lines(summary: list[dict[str, Any]], k: int) -> list[str]:
    lines = [f"speculative decoding (prompt lookup, SPECULATIVE_NGRAM_TOKENS={k}) vs plain, input-grounded",
             f"{'clients':>7} | {'plain':>7} | {'spec':>7} | {'ratio':>5} | {'pairs':>9} | {'accept':>6} | "
             f"{'tok/req':>7} | {'diff':>4} | target"]
    for s in summary:
        pairs = s["pair_ratios"]
        target = "-" if s["target"] is None else \
            f">= {s['target']:.2f} {'ok' if s['meets_target'] else 'SHORT'}"
        lines.append(f"{s['clients']:>7} | {s['plain_tokens_per_s']:>7.1f} | "
                     f"{s['speculative_tokens_per_s']:>7.1f} | {s['ratio']:>5.2f} | "
                     f"{min(pairs):.2f}-{max(pairs):.2f} | {s['acceptance']:>6.0%} | "
                     f"{s['tokens_per_request']:>7.1f} | {s['mismatches']:>4} | {target}")
    return lines


def speculative_check(model: str, log_dir: Path, k: int, levels: list[int], repeats: int,
                      requests_per_client: int, max_tokens: int, env: dict[str, str]) -> list[dict[str, Any]]:
    servers = {}
    try:
        servers["plain"] = start_server(log_dir, {"MODEL_PATH": model, **env})
        servers["speculative"] = start_server(log_dir, {"MODEL_PATH": model, **env,
                                                        "SPECULATIVE_NGRAM_TOKENS": str(k)})
        for srv in servers.values():
            ask(srv.url, 0, 8)  # warm-up
        results = []
        for c in levels:
            n = requests_per_client if c > 1 else max(requests_per_client, 2 * len(PARAGRAPHS))
            runs: dict[str, list[dict[str, Any]]] = {"plain": [], "speculative": []}
            before = draft_counters(servers["speculative"].url)
            for rep in range(repeats):
                order = ("plain", "speculative") if rep % 2 == 0 else ("speculative", "plain")
                for name in order:
                    runs[name].append(run_arm(servers[name].url, c, n, max_tokens))
            after = draft_counters(servers["speculative"].url)
            mismatches = sum(a != b for p, s in zip(runs["plain"], runs["speculative"], strict=True)
                             for a, b in zip(p["texts"].values(), s["texts"].values(), strict=True))
            results.append({"clients": c, "runs": runs, "drafted": after[0] - before[0],
                            "accepted": after[1] - before[1], "mismatches": mismatches})
        return results
    finally:
        for srv in servers.values():
            srv.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--tokens", type=int, default=8, help="the speculative server's SPECULATIVE_NGRAM_TOKENS")
    ap.add_argument("--levels", default="1,8", help="comma-separated client counts")
    ap.add_argument("--repeats", type=int, default=3, help="alternating pairs of runs per level")
    ap.add_argument("--requests", type=int, default=2, help="requests per client (c = 1: at least 8)")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for both servers (repeatable)")
    args = ap.parse_args(argv)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    env = dict(e.split("=", 1) for e in args.env)
    levels = [int(c) for c in args.levels.split(",") if c]
    raw = speculative_check(args.model, results_dir, args.tokens, levels, args.repeats, args.requests,
                            args.max_tokens, env)
    summary = summarize(raw)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results_dir / f"speculative-{stamp}.json"
    path.write_text(json.dumps({"tokens": args.tokens, "max_tokens": args.max_tokens, "summary": summary,
                                "levels": raw}, indent=1))
    print("\n".join(table_lines(summary, args.tokens)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
