"""Bare `model.generate` on the benchmark's prompts, in a worker process of its own.

The worker loads the model once, prints `ready`, then answers one JSON line per command read from
stdin: `{"batch": [prompt indexes]}` runs one `generate` call on those prompts (a static left-padded
batch, or one request when the list has one index) and answers `{"seconds": s, "tokens": t}`.
Keeping the worker alive lets the bench alternate bare and server measurements cheaply, so both
see the same machine load (these machines are noisy); while the server is measured, the worker
only waits on stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
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
    args = ap.parse_args()
    loaded = loader.load(Settings(model_path=args.model, device_map="auto"))
    run_generate(loaded, [0], 8)  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        idx = [int(i) for i in json.loads(line)["batch"]]
        seconds = run_generate(loaded, idx, args.new_tokens)
        print(json.dumps({"seconds": seconds, "tokens": len(idx) * args.new_tokens}), flush=True)


if __name__ == "__main__":
    main()
