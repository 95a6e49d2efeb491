"""`make bench` (`python -m bench.run [options]`; `make bench BENCH_ARGS="--quick"`).

1. Bare `model.generate` in a worker process of its own (loaded once): sequential for c = 1, a
   static batch of c otherwise.
2. The real server (`python -m server`, gunicorn, a free port): tokens/s with c closed-loop clients
   (each sends its next request when the last one is answered), every request greedy with exactly
   N new tokens (`min_new_tokens`); time to first token of streamed requests at idle and while c=8
   clients keep the engine busy.
3. The kernel check (bench/kernel_check.py): a plain single request's latency against the same
   server with `CPU_LINEAR=torch`, and c = 1, 2, 4 against `torch` and `onednn` servers.
4. With `--structured`, the structured check (bench/structured_check.py): one JSON schema on every
   request against unconstrained requests at c = 1, 8, 32, and the constraint mask time per step.
At each level the two alternate `--repeats` times (each one idle while the other runs), so both
sample the same stretch of machine load; the table gives medians, their ratio, and the range of
the per-pair ratios. Prints the table, writes JSON and a PNG chart (tokens/s against concurrency,
server vs bare) under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench.adapter_check import adapter_table_lines
from bench.client import chat, stream_ttft, throughput, ttft_under_load
from bench.kernel_check import kernel_table_lines
from bench.structured_check import structured_check, structured_table_lines
from tools.local_server import MODEL_DIR, ROOT, start_server

RESULTS = ROOT / "bench" / "results"


class BareWorker:
    """The bare-`generate` reference (bench/bare.py), loaded once in its own process."""

    def __init__(self, model: str, new_tokens: int, log_path: Path) -> None:
        cmd = [sys.executable, "-m", "bench.bare", "--model", model, "--new-tokens", str(new_tokens)]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True)
        if self._line() != "ready":
            raise RuntimeError(f"bare worker failed to start; see {log_path}")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line and self.proc.poll() is not None:
            raise RuntimeError("bare worker exited")
        return line

    def tokens_per_s(self, batches: list[list[int]]) -> float:
        """Run each batch as one `generate` call, one after another; tokens/s over all of them."""
        assert self.proc.stdin is not None
        seconds = tokens = 0.0
        for idx in batches:
            self.proc.stdin.write(json.dumps({"batch": idx}) + "\n")
            self.proc.stdin.flush()
            answer = json.loads(self._line())
            seconds += answer["seconds"]
            tokens += answer["tokens"]
        return tokens / seconds

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def measure_level(url: str, worker: BareWorker, clients: int, rounds: int, new_tokens: int,
                  repeats: int) -> tuple[dict, dict]:
    """Alternate the bare reference and the server `repeats` times at one concurrency, so that
    both sample the same stretch of machine load; report medians (and every pair in the JSON)."""
    if clients == 1:
        name, batches = "sequential", [[i] for i in range(rounds)]
    else:
        name, batches = f"static_{clients}", [list(range(clients))]
    bare_runs: list[float] = []
    server_runs: list[dict] = []
    for _ in range(repeats):
        bare_runs.append(worker.tokens_per_s(batches))
        server_runs.append(throughput(url, clients, rounds, new_tokens))
    median_run = sorted(server_runs, key=lambda r: r["tokens_per_s"])[len(server_runs) // 2]
    server = {**median_run, "runs_tokens_per_s": [r["tokens_per_s"] for r in server_runs],
              "pair_ratios": [r["tokens_per_s"] / b for r, b in zip(server_runs, bare_runs, strict=True)]}
    bare = {name: {"requests": len(batches) * len(batches[0]), "tokens_per_s": statistics.median(bare_runs),
                   "runs_tokens_per_s": bare_runs}}
    return bare, server


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    server = result["server"]
    xs = [s["clients"] for s in server]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [s["tokens_per_s"] for s in server], "o-", label="inferbox server (c clients)")
    bare_pts = [(1, v["tokens_per_s"]) for k, v in result["bare"].items() if k == "sequential"]
    bare_pts += [(int(k.split("_")[1]), v["tokens_per_s"]) for k, v in result["bare"].items()
                 if k.startswith("static_")]
    bare_pts.sort()
    ax.plot([p[0] for p in bare_pts], [p[1] for p in bare_pts], "s--",
            label="bare generate (sequential / static batch)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(xs) | {p[0] for p in bare_pts}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("concurrent clients / batch size")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"{result['model_name']}, {result['new_tokens']} new tokens, {result['device']}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(result: dict) -> str:
    b = result["bare"]
    ref = {1: ("bare sequential", b["sequential"]["tokens_per_s"], 0.95)} if "sequential" in b else {}
    for k, v in b.items():
        if k.startswith("static_"):
            ref[int(k.split("_")[1])] = (f"bare static batch {k.split('_')[1]}", v["tokens_per_s"], 1.0)
    lines = [f"{'clients':>7} | {'server tok/s':>12} | {'p50 latency s':>13} | {'reference':<22} | "
             f"{'ref tok/s':>9} | {'ratio':>5} | {'pairs':>9} | target"]
    for s in result["server"]:
        c = s["clients"]
        name, value, need = ref.get(c, ("-", float("nan"), float("nan")))
        ratio = s["tokens_per_s"] / value if value == value else float("nan")
        verdict = "ok" if ratio >= need else "SHORT"
        pairs = s.get("pair_ratios") or [ratio]
        span = f"{min(pairs):.2f}-{max(pairs):.2f}"
        lines.append(f"{c:>7} | {s['tokens_per_s']:>12.1f} | {s['latency_p50_s']:>13.2f} | {name:<22} | "
                     f"{value:>9.1f} | {ratio:>5.2f} | {span:>9} | >= {need:.2f} {verdict}")
    t = result.get("ttft")
    if t:
        ratio = t["under_load_p50_s"] / t["idle_p50_s"]
        lines.append(f"TTFT p50: idle {t['idle_p50_s'] * 1000:.0f} ms, under c={t['load_clients']} "
                     f"{t['under_load_p50_s'] * 1000:.0f} ms, ratio {ratio:.2f} (target <= 2.00 "
                     f"{'ok' if ratio <= 2 else 'SHORT'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,2,4,8,32", help="comma-separated client counts")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client at c > 1")
    ap.add_argument("--sequential", type=int, default=4, help="requests at c = 1 (and bare sequential)")
    ap.add_argument("--ttft-probes", type=int, default=6, help="0 skips the TTFT measurement")
    ap.add_argument("--repeats", type=int, default=3,
                    help="bare/server alternations per level (medians are reported)")
    ap.add_argument("--kernel-levels", default="1,2,4",
                    help="client counts of the kernel check (empty: skip the kernel check)")
    ap.add_argument("--latency-runs", type=int, default=5, help="single requests per server (kernel check)")
    ap.add_argument("--quick", action="store_true",
                    help="c = 1, 8; 32 new tokens; one round; 3 probes; kernel check at c = 1, 2")
    ap.add_argument("--adapters", type=int, default=0,
                    help="N > 0: the adapter check (bench/adapter_check.py) with N LoRA adapters")
    ap.add_argument("--adapter-rank", type=int, default=8, help="rank of the adapter check's adapters")
    ap.add_argument("--adapter-clients", type=int, default=8, help="concurrency of the adapter check")
    ap.add_argument("--structured", action="store_true",
                    help="the structured check (bench/structured_check.py): JSON schema vs unconstrained")
    ap.add_argument("--structured-levels", default="1,8,32", help="client counts of the structured check")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    args = ap.parse_args(argv)
    if args.quick:
        args.concurrency, args.new_tokens, args.rounds, args.sequential, args.ttft_probes = "1,8", 32, 1, 2, 3
        args.repeats, args.kernel_levels, args.latency_runs = 1, "1,2", 3
    conc = [int(c) for c in args.concurrency.split(",") if c]
    n = args.new_tokens
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")

    print(f"load before: {os.getloadavg()}", flush=True)
    env = dict(kv.split("=", 1) for kv in args.env)
    worker = BareWorker(args.model, n, RESULTS / f"bare-{stamp}.log")
    bare_result: dict = {}
    try:
        srv = start_server(RESULTS, {"MODEL_PATH": args.model, **env})
    except BaseException:
        worker.close()
        raise
    url = srv.url
    try:
        chat(url, 0, 8)  # warm-up
        server = []
        for c in conc:
            print(f"c={c}: bare generate and server, alternating x{args.repeats}...", flush=True)
            rounds = args.sequential if c == 1 else args.rounds
            bare_level, server_level = measure_level(url, worker, c, rounds, n, args.repeats)
            bare_result.update(bare_level)
            server.append(server_level)
            print(f"  bare {[round(v) for v in next(iter(bare_level.values()))['runs_tokens_per_s']]} tok/s; "
                  f"server {[round(v) for v in server_level['runs_tokens_per_s']]} tok/s; engine "
                  f"{json.dumps({k: round(v, 2) for k, v in server_level['engine'].items()})}", flush=True)
        ttft = None
        if args.ttft_probes:
            print("time to first token...", flush=True)
            idle = [stream_ttft(url, 300 + i, n)[0] for i in range(args.ttft_probes)]
            loaded = ttft_under_load(url, 8, args.ttft_probes, n)
            ttft = {"idle_s": idle, "idle_p50_s": statistics.median(idle), "load_clients": 8,
                    "under_load_s": loaded, "under_load_p50_s": statistics.median(loaded)}
        metrics = requests.get(url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
        kernels = None
        levels = [int(c) for c in args.kernel_levels.split(",") if c]
        if levels:
            print("kernel check: server vs CPU_LINEAR=torch / onednn servers...", flush=True)
            from bench.kernel_check import kernel_check

            kernels = kernel_check(url, args.model, env, RESULTS, levels, args.repeats, args.rounds, n,
                                   args.latency_runs)
        adapters = None
        if args.adapters > 0:
            print(f"adapter check: {args.adapters} adapters at c={args.adapter_clients}...", flush=True)
            from bench.adapter_check import adapter_check

            adapters = adapter_check(url, args.model, env, RESULTS, args.adapters, args.adapter_rank,
                                     args.adapter_clients, args.repeats, args.rounds, n)
        structured = None
        if args.structured:
            print("structured check: one JSON schema vs unconstrained...", flush=True)
            structured = structured_check(url, [int(c) for c in args.structured_levels.split(",") if c],
                                          args.repeats, args.rounds, args.sequential, n)
    finally:
        srv.stop()
        worker.close()

    import torch

    result = {
        "time": stamp, "model": args.model, "model_name": Path(args.model).name, "new_tokens": n,
        "device": "cuda" if torch.cuda.is_available() else f"cpu x{os.cpu_count()}",
        "platform": platform.platform(), "load_after": os.getloadavg(), "server_env": env,
        "bare": bare_result, "server": server, "ttft": ttft, "kernels": kernels, "adapters": adapters,
        "structured": structured,
        "engine_paths": [line for line in metrics.splitlines() if line.startswith("inferbox_engine_path")],
    }
    json_path = RESULTS / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2))
    png_path = json_path.with_suffix(".png")
    chart(result, png_path)
    print(table(result))
    if kernels:

        print("\n".join(kernel_table_lines(kernels)))
    if adapters:

        print("\n".join(adapter_table_lines(adapters)))
    if structured:
        print("\n".join(structured_table_lines(structured)))
    print(f"load after: {result['load_after']}")
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
