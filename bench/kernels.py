"""`python -m bench.kernels`: the start-up kernel timing of `CPU_LINEAR=auto`, printed and uncached.

Times the model's own decode steps (the whole forward, a KV cache of `--cached` tokens) with every
eligible linear layer on `F.linear` and then on oneDNN, at each row bucket up to `--max-batch`,
exactly as the server does at start-up (server/model/kernel_choice.py), but with a larger time
budget and no cache. Prints the table and the choice; writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import torch
from transformers import AutoModelForCausalLM

from server.model import kernel_choice
from server.model.cpu_kernels import ROW_BUCKETS, eligible, unroute
from tools.local_server import MODEL_DIR, ROOT


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--max-batch", type=int, default=32, help="the largest row bucket timed")
    ap.add_argument("--cached", type=int, default=kernel_choice.CACHED_TOKENS, help="KV cache columns")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds before no new bucket starts")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    layers = eligible(model)
    if not layers:
        raise SystemExit(f"oneDNN does not run this model's {args.dtype} layers here")
    start = time.perf_counter()
    timings = kernel_choice.time_buckets(kernel_choice.model_stepper(model, layers, args.cached),
                                         kernel_choice.buckets_up_to(args.max_batch), args.budget)
    decision = kernel_choice.decide(timings, time.perf_counter() - start)
    unroute(layers)
    print("\n".join(decision.lines()))
    print(f"{decision.seconds:.1f} s; oneDNN at row buckets "
          f"{[r for r, on in zip(ROW_BUCKETS, decision.onednn_rows, strict=True) if on]}")
    out = ROOT / "bench" / "results" / f"kernels-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "dtype": args.dtype, "threads": torch.get_num_threads(),
                               "cached_tokens": args.cached, "seconds": decision.seconds,
                               "table": [asdict(t) for t in timings]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
