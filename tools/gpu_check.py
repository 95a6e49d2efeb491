"""A device smoke test: the engine and the real server on CUDA (`python -m tools.gpu_check`).

CI has no GPU, so this is run by hand on a machine with one. It checks, on the given model:
1. loading with `device_map=auto` in float32 and bfloat16 (and a GPU+CPU split via `max_memory`,
   which exercises accelerate's dispatch hooks the way multi-GPU sharding does);
2. continuous batching on CUDA: staggered greedy requests equal bare `generate` on each alone,
   a seeded sample is the same alone and in a busy batch, beams take the exact lane;
3. the real server (gunicorn) on CUDA: /health, /chat (plain and streamed), /v1/chat/completions,
   and /metrics' gpu_info.
Prints one line per check and exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

from server.config import Settings
from server.engine.engine import build_loop
from server.engine.request import GenerationParams, GenerationRequest, collect
from server.model import loader
from tools.local_server import start_server

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)


def _req(loaded: loader.LoadedModel, prompt: str, **kw) -> GenerationRequest:
    kw.setdefault("eos_token_ids", loaded.eos_token_ids)
    kw.setdefault("pad_token_id", loaded.pad_token_id)
    return GenerationRequest(list(loaded.tokenizer(prompt)["input_ids"]), GenerationParams(**kw))


def _alone(loaded: loader.LoadedModel, req: GenerationRequest) -> list[int]:
    device = loaded.model.get_input_embeddings().weight.device
    ids = torch.tensor([req.input_ids], device=device)
    with torch.inference_mode():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=req.params.max_new_tokens,
                                    eos_token_id=list(req.params.eos_token_ids),
                                    pad_token_id=loaded.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def engine_checks(loaded: loader.LoadedModel, label: str, exact: bool) -> None:
    loop = build_loop(loaded, Settings(model_path="-", max_batch_size=16, batch_window_ms=10))
    loop.start()
    try:
        rng = random.Random(0)
        prompts = [" ".join(f"word{rng.randint(0, 99)}" for _ in range(rng.randint(2, 30)))
                   for _ in range(16)]
        reqs = [_req(loaded, p, max_new_tokens=rng.randint(4, 24)) for p in prompts]
        for r in reqs:
            loop.submit(r)
            time.sleep(rng.random() * 0.02)
        got = [collect(r, timeout=300)[0].token_ids for r in reqs]
        same = sum(g == _alone(loaded, r) for g, r in zip(got, reqs, strict=True))
        # bf16 rounding differs between batch shapes; only float32 must match token for token
        check(f"{label}: batched greedy == generate alone", same == len(reqs) or not exact,
              f"{same}/{len(reqs)} identical")

        def sampled() -> GenerationRequest:
            return _req(loaded, "Once upon a time", max_new_tokens=12, do_sample=True,
                        temperature=1.0, top_k=50, seed=42)

        alone = sampled()
        loop.submit(alone)
        a = collect(alone, timeout=300)[0].token_ids
        busy = [_req(loaded, f"busy {i}", max_new_tokens=20) for i in range(6)]
        for r in busy:
            loop.submit(r)
        again = sampled()
        loop.submit(again)
        b = collect(again, timeout=300)[0].token_ids
        check(f"{label}: seeded sample alone == in a busy batch", a == b)
        beam = _req(loaded, "The capital of France is", max_new_tokens=6, extra=(("num_beams", 3),))
        loop.submit(beam)
        check(f"{label}: beam search (exact lane)", bool(collect(beam, timeout=300)[0].token_ids))
    finally:
        loop.stop(30)


def server_checks(model: str, env_extra: dict[str, str], label: str) -> None:
    try:
        srv = start_server(Path(tempfile.gettempdir()), {"MODEL_PATH": model, **env_extra})
    except RuntimeError as exc:  # exited early or never healthy; the message ends with its log
        check(f"{label}: server healthy", False, str(exc)[-3000:])
        return
    check(f"{label}: server healthy", True)
    url = srv.url
    try:
        body = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
                "generate_kwargs": {"max_new_tokens": 20, "do_sample": False}}
        r = requests.post(url + "/chat", json=body, timeout=120)
        check(f"{label}: /chat", r.status_code == 200, r.text[:120])
        s = requests.post(url + "/chat", json={**body, "stream": True}, timeout=120, stream=True)
        events = [ln for ln in s.iter_lines(decode_unicode=True) if ln.startswith("data:")]
        check(f"{label}: /chat stream", s.status_code == 200 and events[-1].endswith("[DONE]"),
              f"{len(events)} events")
        o = requests.post(url + "/v1/chat/completions", json={
            "model": "x", "messages": body["messages"], "max_tokens": 8, "temperature": 0}, timeout=120)
        check(f"{label}: /v1/chat/completions", o.status_code == 200, o.text[:120])
        m = requests.get(url + "/metrics", timeout=30).json()
        check(f"{label}: /metrics gpu_info", bool(m.get("gpu_info")), json.dumps(m)[:160])
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--split-memory", default="0=12800KiB,cpu=4GiB",
                    help="MAX_MEMORY for the GPU+CPU split check")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    for dtype, exact in (("float32", True), ("bfloat16", False)):
        loaded = loader.load(Settings(model_path=args.model, torch_dtype=dtype, device_map="auto"))
        check(f"{dtype}: loaded on cuda", loaded.device.type == "cuda" and str(loaded.dtype).endswith(dtype),
              f"{loaded.device} {loaded.dtype}")
        engine_checks(loaded, dtype, exact)
        del loaded
        torch.cuda.empty_cache()
    split = Settings(model_path=args.model, torch_dtype="float32", device_map="auto",
                     max_memory=dict(p.split("=") for p in args.split_memory.split(",")))
    loaded = loader.load(split)
    devices = sorted({str(p.device) for p in loaded.model.parameters()})
    check("split gpu+cpu: several devices", len(devices) > 1, f"{devices}")
    engine_checks(loaded, "split gpu+cpu", True)
    del loaded
    server_checks(args.model, {"TORCH_DTYPE": "bfloat16", "DEVICE_MAP": "auto"}, "server bf16")
    failed = [n for n, ok, _ in results if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
