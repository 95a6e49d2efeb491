"""Bare `model.generate` on the benchmark's prompts, in a process of its own (no server running).

Prints one JSON object: tokens/s sequential (one request at a time) and for static left-padded
batches of each requested size.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.workload import generate_kwargs, messages
from server.config import Settings
from server.model import loader


def _batch(loaded: loader.LoadedModel, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    tok = loaded.tokenizer
    texts = [tok.apply_chat_template(messages(i), add_generation_prompt=True, tokenize=False) for i in idx]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"].to(loaded.device), enc["attention_mask"].to(loaded.device)


def run_generate(loaded: loader.LoadedModel, idx: list[int], new_tokens: int) -> float:
    """Seconds for one `generate` call on these prompts."""
    ids, mask = _batch(loaded, idx)
    start = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=mask, pad_token_id=loaded.pad_token_id,
                                    **generate_kwargs(new_tokens))
    elapsed = time.perf_counter() - start
    assert out.shape[1] - ids.shape[1] == new_tokens
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--sequential", type=int, default=4, help="requests run one at a time")
    ap.add_argument("--batches", default="8,32", help="static batch sizes")
    args = ap.parse_args()
    loaded = loader.load(Settings(model_path=args.model, device_map="auto"))
    n = args.new_tokens
    run_generate(loaded, [0], 8)  # warm-up
    result = {}
    if args.sequential:
        seq_time = sum(run_generate(loaded, [i], n) for i in range(args.sequential))
        result["sequential"] = {"requests": args.sequential, "tokens_per_s": args.sequential * n / seq_time}
    for b in (int(x) for x in args.batches.split(",") if x):
        t = run_generate(loaded, list(range(b)), n)
        result[f"static_{b}"] = {"requests": b, "tokens_per_s": b * n / t}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
