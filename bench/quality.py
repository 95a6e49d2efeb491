"""`make bench-quality` (`python -m bench.quality [options]`): what QUANTIZATION and bfloat16 cost
in quality.

For each setting (default float32, bfloat16, then int8, int4 in float32) the model is loaded by the
server's own loader, so the weights measured are the weights served, and run under teacher forcing
over a fixed held-out text (`tests/data/heldout.txt`, ~2,400 tokens of plain English prose, in
windows of `--window` tokens):
- perplexity of the text;
- greedy top-1 agreement with float32: the share of positions where the model's most likely next
  token is float32's;
- weight memory as stored (quantized data and scales; embeddings and LM head stay float);
- with `--speed-steps N`, decode speed (ms per step at batch 1 and 8, medians; read the ratios on
  a shared machine).
Every row runs PyTorch's own linear (`CPU_LINEAR=torch`, `--speed-steps` too): rows differ in weights and
dtype only, and no start-up kernel timing runs.
Prints a table and writes JSON under bench/results/ (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from server.config import Settings
from server.model import loader
from tools.local_server import MODEL_DIR, ROOT

HELDOUT = ROOT / "tests" / "data" / "heldout.txt"
RESULTS = ROOT / "bench" / "results"
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def token_ids(tokenizer: Any, max_tokens: int | None = None) -> torch.Tensor:
    ids = tokenizer(HELDOUT.read_text(), return_tensors="pt").input_ids[0]
    return ids[:max_tokens] if max_tokens else ids


@torch.inference_mode()
def teacher_forced(model: Any, ids: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position negative log-likelihood of the next token, and the model's top-1 guess."""
    nll, top1 = [], []
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1].unsqueeze(0)
        logits = model(chunk[:, :-1]).logits[0].float()
        nll.append(torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="none"))
        top1.append(logits.argmax(-1))
    return torch.cat(nll), torch.cat(top1)


@torch.inference_mode()
def decode_ms(model: Any, batch: int, steps: int, prompt: int = 32) -> float:
    """Median time of one decode step with a KV cache of `prompt` tokens, `batch` rows."""
    ids = torch.randint(100, 1000, (batch, prompt), generator=torch.Generator().manual_seed(0))
    out = model(ids, use_cache=True)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        out = model(token, past_key_values=cache, use_cache=True)
        times.append(time.perf_counter() - t)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return statistics.median(times) * 1000


def settings(quantizations: list[str], dtypes: list[str]) -> list[tuple[str, str]]:
    """(quantization, dtype) rows: float32 unquantized first (the reference), the other dtypes
    unquantized, then each quantization in float32."""
    rows = [("none", "float32"), *[("none", d) for d in dtypes if d != "float32"]]
    return rows + [(q, "float32") for q in quantizations if q != "none"]


def measure(model_dir: str, quantizations: list[str], window: int = 512, max_tokens: int | None = None,
            speed_steps: int = 0, dtypes: list[str] | None = None) -> dict[str, Any]:
    """One row per setting (see `settings`); float32 unquantized is the reference.
    `int8:down_proj` means QUANTIZATION=int8 QUANTIZATION_SKIP=down_proj."""
    rows: list[dict[str, Any]] = []
    ref_top1: torch.Tensor | None = None
    for q, dtype in settings(quantizations, dtypes or ["float32"]):
        name, _, skip = q.partition(":")
        loaded = loader.load(Settings(model_path=model_dir, quantization=name, torch_dtype=dtype,
                                      quantization_skip=tuple(filter(None, skip.split("+"))),
                                      cpu_linear="torch"))
        ids = token_ids(loaded.tokenizer, max_tokens)
        nll, top1 = teacher_forced(loaded.model, ids, window)
        if ref_top1 is None:
            ref_top1 = top1
        row = {
            "quantization": q,
            "dtype": dtype,
            "tokens": int(len(nll)),
            "perplexity": math.exp(nll.mean().item()),
            "top1_agreement": (top1 == ref_top1).float().mean().item(),
            "weight_bytes": loaded.weight_bytes,
        }
        if speed_steps:
            row["decode_ms_b1"] = decode_ms(loaded.model, 1, speed_steps)
            row["decode_ms_b8"] = decode_ms(loaded.model, 8, speed_steps)
        rows.append(row)
        del loaded
    base = rows[0]
    for row in rows:
        row["perplexity_vs_fp32"] = row["perplexity"] / base["perplexity"] - 1
        row["weight_ratio"] = row["weight_bytes"] / base["weight_bytes"]
    return {"model": model_dir, "text": str(HELDOUT.relative_to(ROOT)), "window": window, "rows": rows,
            "machine": {"platform": platform.platform(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()}}


def table(result: dict[str, Any]) -> str:
    speed = "decode_ms_b1" in result["rows"][0]
    head = "| weights | perplexity | vs fp32 | top-1 agreement | weight memory |"
    rule = "|---|---|---|---|---|"
    if speed:
        head += " ms/step b1 | ms/step b8 |"
        rule += "---|---|"
    lines = [head, rule]
    for r in result["rows"]:
        name = r["quantization"] if r["quantization"] != "none" else SHORT.get(r.get("dtype", "float32"))
        mib = r["weight_bytes"] / 2**20
        line = (f"| {name} | {r['perplexity']:.3f} | {r['perplexity_vs_fp32']:+.2%} | "
                f"{r['top1_agreement']:.2%} | {mib:.0f} MiB ({r['weight_ratio']:.2f}x) |")
        if speed:
            line += f" {r['decode_ms_b1']:.1f} | {r['decode_ms_b8']:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=str(MODEL_DIR))
    parser.add_argument("--quantizations", default="none,int8,int4,int8:down_proj",
                        help="QUANTIZATION values; `int8:a+b` also keeps modules a and b unquantized")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="TORCH_DTYPE values measured unquantized against float32")
    parser.add_argument("--window", type=int, default=512, help="tokens per teacher-forced forward")
    parser.add_argument("--max-tokens", type=int, default=None, help="only the text's first N tokens")
    parser.add_argument("--speed-steps", type=int, default=0,
                        help="also time this many decode steps at batch 1 and 8 (default 0: skip)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = measure(args.model_dir, args.quantizations.split(","), args.window, args.max_tokens,
                     args.speed_steps, args.dtypes.split(","))
    print(table(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
