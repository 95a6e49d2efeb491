"""Bare `model.generate` on the benchmark's prompts, in a worker process of its own.

"Bare" means the model as plain transformers loads it (float32 on a CPU), not through the server's
loader, so that the server's own speed levers (its batching and its CPU kernels) are measured.

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
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from bench.workload import generate_kwargs, messages


@dataclass
class Bare:
    """The model as plain transformers loads it: none of the server's loader or kernel choices."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @classmethod
    def load(cls, path: str) -> Bare:
        cuda = torch.cuda.is_available()
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype="auto" if cuda else torch.float32,
            **({"device_map": "auto"} if cuda else {}))
        return cls(model.eval(), tok)


def _batch(bare: Bare, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    tok = bare.tokenizer
    texts = [tok.apply_chat_template(messages(i), add_generation_prompt=True, tokenize=False) for i in idx]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"].to(bare.model.device), enc["attention_mask"].to(bare.model.device)


def run_generate(bare: Bare, idx: list[int], new_tokens: int) -> float:
    """Seconds for one `generate` call on these prompts."""
    ids, mask = _batch(bare, idx)
    start = time.perf_counter()
    with torch.inference_mode():
        out = bare.model.generate(input_ids=ids, attention_mask=mask,
                                  pad_token_id=bare.tokenizer.pad_token_id, **generate_kwargs(new_tokens))
    elapsed = time.perf_counter() - start
    assert out.shape[1] - ids.shape[1] == new_tokens
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    loaded = Bare.load(args.model)
    run_generate(loaded, [0], 8)  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        idx = [int(i) for i in json.loads(line)["batch"]]
        seconds = run_generate(loaded, idx, args.new_tokens)
        print(json.dumps({"seconds": seconds, "tokens": len(idx) * args.new_tokens}), flush=True)


if __name__ == "__main__":
    main()
