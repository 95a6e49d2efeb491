"""`python -m bench.gpu OUT_DIR [options]`: the server on a real model shape, on one GPU.

1. Builds the shape (default the Llama-3.1-8B preset; `--shape 1b` for a quick run, `--shape tiny`
   for the CPU smoke test) with random weights (bench/synthetic.py) in bfloat16 (float32 on a CPU).
2. For each `--quantization` (default none,int8), in turn, with the GPU to itself:
   - the real server (`python -m server`, gunicorn) with c = 1, 8, 32, 64 closed-loop clients, each
     request a fixed-length prompt and exactly N greedy new tokens (`min_new_tokens`);
   - bare `model.generate` on the same model: sequentially for c = 1, static batches of c otherwise;
   - transformers' own continuous batching (`generate_batch`, what `transformers serve
     --continuous-batching` runs) on c requests at once.
3. Prints tokens/s, the ratios with their targets (c=32 >= 1.5x static batch 32; c=1 >= 0.9x bare;
   c=32 >= generate_batch), and the memory-bandwidth roofline: at batch 1 every step reads every
   weight, so bandwidth / weight bytes is the ceiling in tokens/s.
4. With `--tensor-parallel N` (a machine with N GPUs or more), the server again split over N GPUs
   (TENSOR_PARALLEL=N, unquantized), and its tokens/s over the one-GPU server's at each c.
5. Writes gpu-<time>.json and gpu-<time>.png to OUT_DIR.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import torch

from bench import synthetic
from tools.local_server import start_server

# The targets: server / bare at c (c=1: bare sequential), server / generate_batch at c.
TARGET_VS_BARE = {1: 0.9, 32: 1.5}
TARGET_VS_GENERATE_BATCH = {32: 1.0}


def _request(url: str, text: str, new_tokens: int) -> None:
    body = {"prompt": text, "return_full_text": False,
            "generate_kwargs": {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens,
                                "do_sample": False}}
    requests.post(url + "/chat", json=body, timeout=900).raise_for_status()


def server_level(url: str, prompts: list[str], clients: int, rounds: int, new_tokens: int) -> dict[str, Any]:
    """c closed-loop clients, `rounds` requests each: generated tokens/s over the wall time."""
    def client(k: int) -> None:
        for r in range(rounds):
            _request(url, prompts[(k + r * clients) % len(prompts)], new_tokens)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    return {"clients": clients, "tokens": clients * rounds * new_tokens, "wall_s": wall,
            "tokens_per_s": clients * rounds * new_tokens / wall}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bare_level(model: Any, ids: torch.Tensor, clients: int, rounds: int, new_tokens: int) -> dict[str, Any]:
    """`generate` sequentially (c = 1) or on static batches of c, `rounds` times."""
    batch = ids[:clients]
    tokens = 0
    _sync()
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(rounds):
            out = model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            tokens += (out.shape[1] - batch.shape[1]) * batch.shape[0]
    _sync()
    wall = time.perf_counter() - start
    return {"clients": clients, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def generate_batch_level(model: Any, ids: torch.Tensor, clients: int, rounds: int,
                         new_tokens: int) -> dict[str, Any]:
    """transformers' continuous batching on c requests at once, `rounds` times."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
    cb = None
    if not torch.cuda.is_available():
        # Its default paged cache is sized from free memory: minutes to set up on a CPU. Room for
        # the batch is enough here (on a GPU the default sizing is what `transformers serve` uses).
        pages = -(-(ids.shape[1] + new_tokens) // 256)
        cb = ContinuousBatchingConfig(num_blocks=clients * pages + 1, max_batch_tokens=max(256, ids.shape[1]))
    inputs = [row.tolist() for row in ids[:clients]]
    model.generate_batch(inputs=inputs[:1], generation_config=config,  # warm-up (and graph capture)
                         continuous_batching_config=cb)
    tokens = 0
    _sync()
    start = time.perf_counter()
    for _ in range(rounds):
        outputs = model.generate_batch(inputs=inputs, generation_config=config, continuous_batching_config=cb)
        tokens += sum(len(o.generated_tokens) for o in outputs.values())
    _sync()
    wall = time.perf_counter() - start
    return {"clients": clients, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def run_bare(model_dir: Path, dtype: torch.dtype, quantization: str, prompts: list[str],
             conc: list[int], rounds: int, new_tokens: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from server.model.quantize import quantization_config

    cuda = torch.cuda.is_available()
    qconfig = quantization_config(quantization)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, **({"device_map": "cuda"} if cuda else {}),
        **({"quantization_config": qconfig} if qconfig else {})).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(prompts[:max(conc)], return_tensors="pt").input_ids.to(model.device)
    bare_level(model, ids, 1, 1, 2)  # warm-up
    out: dict[str, Any] = {"bare": [], "generate_batch": []}
    for c in conc:
        out["bare"].append(bare_level(model, ids, c, rounds if c > 1 else rounds * 2, new_tokens))
        try:
            out["generate_batch"].append(generate_batch_level(model, ids, c, rounds, new_tokens))
        except Exception as exc:  # report, do not hide: a missing reference is visible in the table
            out["generate_batch"].append({"clients": c, "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(f"  c={c}: bare {out['bare'][-1]['tokens_per_s']:.1f} tok/s, generate_batch "
              f"{out['generate_batch'][-1].get('tokens_per_s', float('nan')):.1f} tok/s", flush=True)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def run_server(model_dir: Path, dtype: str, quantization: str, prompts: list[str], conc: list[int],
               rounds: int, new_tokens: int, log_dir: Path, tensor_parallel: int = 1) -> dict[str, Any]:
    env = {"MODEL_PATH": str(model_dir), "TORCH_DTYPE": dtype, "QUANTIZATION": quantization,
           "MAX_BATCH_SIZE": str(max(conc)), "MAX_BATCH_TOKENS": str(max(conc) * 4096),
           "LOG_LEVEL": "warning", "TENSOR_PARALLEL": str(tensor_parallel)}
    srv = start_server(log_dir, env, timeout=900)
    try:
        _request(srv.url, prompts[0], 2)  # warm-up
        info = requests.get(srv.url + "/metrics", timeout=30).json()["model_info"]
        levels = []
        for c in conc:
            levels.append(server_level(srv.url, prompts, c, rounds if c > 1 else rounds * 2, new_tokens))
            print(f"  c={c}: server {levels[-1]['tokens_per_s']:.1f} tok/s", flush=True)
    finally:
        srv.stop()
    return {"server": levels, "weight_bytes": info["weight_bytes"]}


def ratios(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Server over each reference at each c, with the issue's targets where they apply."""
    out = []
    for s, b, g in zip(run["server"], run["bare"], run["generate_batch"], strict=True):
        c, tps, gb = s["clients"], s["tokens_per_s"], g.get("tokens_per_s")
        out.append({"clients": c, "server": tps, "bare": b["tokens_per_s"], "generate_batch": gb,
                    "vs_bare": tps / b["tokens_per_s"], "vs_generate_batch": tps / gb if gb else None,
                    "target_vs_bare": TARGET_VS_BARE.get(c),
                    "target_vs_generate_batch": TARGET_VS_GENERATE_BATCH.get(c)})
    return out


def _verdict(value: float | None, need: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" {'ok' if value >= need else 'SHORT'}" if need else "")


def table(result: dict[str, Any]) -> str:
    lines = []
    for run in result["runs"]:
        q = run["quantization"]
        roof = run.get("roofline_tokens_per_s")
        lines.append(f"{result['model']['shape']} {q}: weights {run['weight_bytes'] / 2**30:.2f} GiB; "
                     + (f"batch-1 roofline {roof:.1f} tok/s at {result['bandwidth_gbs']:.0f} GB/s"
                        if roof else "no bandwidth known for this device (--bandwidth-gbs)"))
        lines.append(f"{'c':>3} | {'server':>9} | {'bare':>9} | {'gen_batch':>9} | {'vs bare':>12} | "
                     f"{'vs gen_batch':>12} | {'of roofline':>11}")
        for r in run["ratios"]:
            gb = f"{r['generate_batch']:.1f}" if r["generate_batch"] else "error"
            of_roof = f"{r['server'] / roof:.0%}" if roof and r["clients"] == 1 else ""
            vs_bare = _verdict(r["vs_bare"], r["target_vs_bare"])
            vs_gb = _verdict(r["vs_generate_batch"], r["target_vs_generate_batch"])
            lines.append(f"{r['clients']:>3} | {r['server']:>9.1f} | {r['bare']:>9.1f} | {gb:>9} | "
                         f"{vs_bare:>12} | {vs_gb:>12} | {of_roof:>11}")
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, style in zip(result["runs"], ("-", ":"), strict=False):
        q = run["quantization"]
        for key, marker, label in (("server", "o", "inferbox"), ("bare", "s", "bare generate"),
                                   ("generate_batch", "^", "generate_batch")):
            pts = [(r["clients"], r[key]) for r in run["ratios"] if r[key]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker + style, label=f"{label} ({q})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients / batch size")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"{result['model']['shape']} (random weights), {result['device']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for the JSON and the PNG")
    ap.add_argument("--shape", default="llama-3.1-8b-instruct", help="a preset name, 1b or tiny")
    ap.add_argument("--quantization", default="none,int8")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client (c = 1: twice this)")
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="default: by the GPU's name")
    ap.add_argument("--work-dir", type=Path, default=None, help="where the model folder is written")
    ap.add_argument("--tensor-parallel", type=int, default=1, help="also serve split over this many GPUs")
    args = ap.parse_args(argv)
    if args.tensor_parallel > 1 and torch.cuda.device_count() < args.tensor_parallel:
        ap.error(f"--tensor-parallel {args.tensor_parallel} needs as many GPUs; "
                 f"this machine has {torch.cuda.device_count()}")
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    device = torch.cuda.get_device_name(0) if cuda else f"cpu x{os.cpu_count()}"
    bandwidth = args.bandwidth_gbs or (synthetic.bandwidth_gbs(device) if cuda else None)
    conc = [int(c) for c in args.concurrency.split(",") if c]
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="inferbox-gpu-", dir=args.work_dir))
    try:
        model_dir = work / "model"
        t = time.perf_counter()
        described = synthetic.build(args.shape, model_dir, dtype, "cuda" if cuda else "cpu")
        print(f"built {described['shape']} ({described['parameters'] / 1e9:.2f}B parameters, "
              f"{described['dtype']}) in {time.perf_counter() - t:.0f} s on {device}", flush=True)
        prompts = [synthetic.prompt(i, args.prompt_tokens, described["vocab_size"])
                   for i in range(max(conc) * args.rounds)]
        runs = []
        for q in [q for q in args.quantization.split(",") if q]:
            print(f"QUANTIZATION={q}: server", flush=True)
            run = {"quantization": q, **run_server(model_dir, described["dtype"], q, prompts, conc,
                                                   args.rounds, args.new_tokens, work)}
            print(f"QUANTIZATION={q}: bare generate and generate_batch", flush=True)
            run.update(run_bare(model_dir, dtype, q, prompts, conc, args.rounds, args.new_tokens))
            run["ratios"] = ratios(run)
            run["roofline_tokens_per_s"] = bandwidth * 1e9 / run["weight_bytes"] if bandwidth else None
            runs.append(run)
        split = None
        if args.tensor_parallel > 1:
            n = args.tensor_parallel
            print(f"TENSOR_PARALLEL={n}: server", flush=True)
            levels = run_server(model_dir, described["dtype"], "none", prompts, conc, args.rounds,
                                args.new_tokens, work, tensor_parallel=n)["server"]
            one = next(r for r in runs if r["quantization"] == "none")["server"] if "none" in [
                r["quantization"] for r in runs] else None
            split = {"tensor_parallel": n, "server": levels,
                     "ratio_vs_one_gpu": [s["tokens_per_s"] / o["tokens_per_s"]
                                          for s, o in zip(levels, one, strict=True)] if one else None}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {"time": stamp, "device": device, "bandwidth_gbs": bandwidth, "model": described,
              "new_tokens": args.new_tokens, "prompt_tokens": args.prompt_tokens, "rounds": args.rounds,
              "platform": platform.platform(), "torch": torch.__version__, "runs": runs,
              "tensor_parallel": split}
    json_path = args.out / f"gpu-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2))
    chart(result, json_path.with_suffix(".png"))
    print(table(result))
    if split is not None:
        for c, level, ratio in zip(conc, split["server"], split["ratio_vs_one_gpu"] or [None] * len(conc),
                                   strict=True):
            print(f"TENSOR_PARALLEL={split['tensor_parallel']} c={c}: {level['tokens_per_s']:.1f} tok/s"
                  + (f" ({ratio:.2f}x one GPU)" if ratio else ""))
    print(f"wrote {json_path} and {json_path.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
