"""`CPU_LINEAR=auto`: choose the CPU linear kernel per row bucket by timing the running model.

Which kernel wins depends on the machine (docs/benchmarks.md has the kernel tables), and a layer timed alone
with its weight hot in cache favours `F.linear` where the model, whose weights stream from memory,
does not. So at start-up the whole model takes decode steps as in serving: a batch of B rows, one
new token each, over a KV cache of `CACHED_TOKENS` columns, with every eligible layer on oneDNN and
then every layer on `F.linear`, at each row bucket up to MAX_BATCH_SIZE. The two kernels alternate
step by step (drift on a shared machine hits both), each takes the best of a few steps after one
warm-up step, and a total time budget stops the timing early on slow machines or big models.

Per bucket oneDNN is kept only when it is faster by more than `TIE` (a fraction); within noise
`F.linear`, PyTorch's own path, stays. Buckets past the last one timed (prefills, or a cut-short
timing) take the last timed bucket's choice.

The decision is cached as JSON in KERNEL_CACHE_DIR, keyed by CPU model, torch threads, torch
version, model (path, config hash, parameter count), dtype and the buckets timed, so a restart on
the same machine does not time again. Only a complete timing whose two fastest steps of each
kernel agreed within `MAX_SPREAD` is written: a busy machine's timing serves this process only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from server.model.cpu_kernels import ROW_BUCKETS, bucket, eligible, route, unroute
from server.model.cpuinfo import cpu_model_name

log = logging.getLogger(__name__)

KERNELS = ("torch", "onednn")
CACHED_TOKENS = 192
TIE = 0.03  # oneDNN must be this much faster than F.linear to be chosen
BUDGET_S = 10.0  # then no new bucket starts; a started one stops after its first timed step pair
MAX_SPREAD = 1.15  # a kernel's second-fastest step over its fastest above this: too noisy to cache
SCHEMA = 2  # bump when the timing method changes: older cached decisions are then ignored

_THIS_PROCESS: dict[str, Decision] = {}  # decisions not cached on disk, so one process times once

Clock = Callable[[], float]
Step = Callable[[str, int], None]  # (kernel, rows): one decode step with that kernel at that batch


@dataclass(frozen=True)
class BucketTiming:
    """Best-of-reps milliseconds of one whole decode step with each kernel at `rows` rows."""

    rows: int
    torch_ms: float
    onednn_ms: float
    reps: int
    spread: float = 1.0  # the larger of the kernels' second-fastest/fastest timed step

    @property
    def kernel(self) -> str:
        return "onednn" if self.onednn_ms < self.torch_ms * (1 - TIE) else "torch"


@dataclass(frozen=True)
class Decision:
    """Per ROW_BUCKETS entry whether oneDNN runs, with the timings it came from."""

    onednn_rows: tuple[bool, ...]
    timings: tuple[BucketTiming, ...]
    seconds: float
    source: str = "timed"  # or "cache"
    complete: bool = True  # every bucket asked for was timed

    @property
    def reliable(self) -> bool:
        """Worth caching: complete, and no kernel's steps spread more than MAX_SPREAD."""
        return self.complete and bool(self.timings) and all(t.spread <= MAX_SPREAD for t in self.timings)

    def lines(self) -> list[str]:
        out = [f"{'rows':>5} | {'F.linear ms':>11} | {'oneDNN ms':>9} | {'spread':>6} | kernel"]
        out += [f"{t.rows:>5} | {t.torch_ms:>11.2f} | {t.onednn_ms:>9.2f} | {t.spread:>6.2f} | "
                f"{'oneDNN' if t.kernel == 'onednn' else 'F.linear'}" for t in self.timings]
        return out


def buckets_up_to(max_batch_size: int) -> tuple[int, ...]:
    """The row buckets a decode step of up to `max_batch_size` rows can fall in."""
    return ROW_BUCKETS[:bucket(max_batch_size) + 1]


def reps_for(rows: int) -> int:
    """Timed steps per kernel: more where steps are cheap, since the best of more resists bursts."""
    return 5 if rows <= 4 else 3 if rows <= 16 else 2


def time_buckets(step: Step, buckets: Sequence[int], budget_s: float = BUDGET_S,
                 clock: Clock = time.perf_counter) -> list[BucketTiming]:
    """Time both kernels at each bucket in turn, interleaved (ABBA order), until the budget is spent:
    the first bucket gets at least one timed step per kernel, later ones none once it is spent."""
    start = clock()
    timings: list[BucketTiming] = []
    for rows in buckets:
        if timings and clock() - start > budget_s:
            log.info("kernel timing: budget of %.0f s spent; rows above %d take its choice", budget_s,
                     timings[-1].rows)
            break
        ms: dict[str, list[float]] = {kernel: [] for kernel in KERNELS}
        for kernel in KERNELS:
            step(kernel, rows)  # warm-up: oneDNN primitives, allocator
        for i in range(reps_for(rows)):
            if i and clock() - start > budget_s:
                break
            for kernel in (KERNELS if i % 2 == 0 else KERNELS[::-1]):
                t0 = clock()
                step(kernel, rows)
                ms[kernel].append((clock() - t0) * 1000)
        spread = max(sorted(v)[min(1, len(v) - 1)] / max(min(v), 1e-9) for v in ms.values())
        timings.append(BucketTiming(rows, min(ms["torch"]), min(ms["onednn"]), len(ms["torch"]), spread))
    return timings


def decide(timings: Sequence[BucketTiming], seconds: float = 0.0, complete: bool = True) -> Decision:
    """Per ROW_BUCKETS entry: the timed bucket's kernel; past the last timed bucket, its kernel."""
    if not timings:
        return Decision((False,) * len(ROW_BUCKETS), (), seconds, complete=False)
    by_rows = {t.rows: t.kernel == "onednn" for t in timings}
    flags: list[bool] = []
    for rows in ROW_BUCKETS:
        flags.append(by_rows.get(rows, flags[-1] if flags else by_rows[timings[0].rows]))
    return Decision(tuple(flags), tuple(timings), seconds, complete=complete)


class _FixedLayer(DynamicLayer):
    """`cached` columns of random keys/values plus one spare that every timed step overwrites, so
    the cache neither grows nor is copied between steps (the engine's cache also writes in place)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self._k, self._v = keys, values
        self.keys, self.values = keys[:, :, :-1], values[:, :, :-1]
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        self._k[:, :, -1:] = key_states
        self._v[:, :, -1:] = value_states
        return self._k, self._v

    def get_seq_length(self) -> int:
        return self._k.shape[-2] - 1


def _decode_input(model: PreTrainedModel, rows: int, cached: int) -> dict[str, Any]:
    config = model.config.get_text_config()
    heads = config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    gen = torch.Generator().manual_seed(rows)
    cache = DynamicCache(config=model.config)
    shape = (rows, heads, cached + 1, head_dim)
    cache.layers = [_FixedLayer(torch.randn(shape, generator=gen).to(model.dtype),
                                torch.randn(shape, generator=gen).to(model.dtype))
                    for _ in range(config.num_hidden_layers)]
    return {"input_ids": torch.randint(0, config.vocab_size, (rows, 1), generator=gen),
            "attention_mask": torch.ones((rows, cached + 1), dtype=torch.long),
            "position_ids": torch.full((rows, 1), cached, dtype=torch.long),
            "past_key_values": cache, "use_cache": True, "logits_to_keep": 1}


def model_stepper(model: PreTrainedModel, layers: Sequence[nn.Linear], cached: int = CACHED_TOKENS) -> Step:
    """One decode step of the model itself at `rows` rows, every eligible layer on `kernel`."""
    inputs: dict[int, dict[str, Any]] = {}
    tables = {"torch": (False,) * len(ROW_BUCKETS), "onednn": (True,) * len(ROW_BUCKETS)}

    def step(kernel: str, rows: int) -> None:
        if rows not in inputs:
            inputs.clear()  # one bucket's cache at a time
            inputs[rows] = _decode_input(model, rows, cached)
        route(layers, tables[kernel])
        with torch.inference_mode():
            model(**inputs[rows])

    return step


def cache_key(model: PreTrainedModel, buckets: Sequence[int]) -> dict[str, Any]:
    config = json.dumps(model.config.to_dict(), sort_keys=True, default=str)
    return {
        "schema": SCHEMA, "cpu": cpu_model_name(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "model": str(getattr(model, "name_or_path", "")),
        "config": hashlib.sha256(config.encode()).hexdigest()[:16],
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype).removeprefix("torch."), "buckets": list(buckets),
        "cached_tokens": CACHED_TOKENS,
    }


def cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir / f"cpu-kernels-{digest}.json"


def load_cached(cache_dir: Path | None, key: dict[str, Any]) -> Decision | None:
    if cache_dir is None:
        return None
    try:
        data = json.loads(cache_path(cache_dir, key).read_text())
        if data["key"] != key or len(data["onednn_rows"]) != len(ROW_BUCKETS):
            return None
        timings = tuple(BucketTiming(**t) for t in data["timings"])
        return Decision(tuple(bool(f) for f in data["onednn_rows"]), timings, 0.0, "cache")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(cache_dir: Path | None, key: dict[str, Any], decision: Decision) -> Path | None:
    """Write the decision (atomically); a cache folder that cannot be written only costs a re-time."""
    if cache_dir is None:
        return None
    path = cache_path(cache_dir, key)
    data = {"key": key, "onednn_rows": list(decision.onednn_rows),
            "timings": [asdict(t) for t in decision.timings], "seconds": decision.seconds,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{time.monotonic_ns()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except OSError as exc:
        log.warning("kernel choice not cached in %s: %s", cache_dir, exc)
        return None
    return path


def choose(model: PreTrainedModel, max_batch_size: int, cache_dir: Path | None,
           budget_s: float = BUDGET_S) -> Decision:
    """Route the model's eligible layers by the timed (or cached) per-bucket kernel choice."""
    layers = eligible(model)
    if not layers:
        return Decision((False,) * len(ROW_BUCKETS), (), 0.0, "no eligible layers")
    buckets = buckets_up_to(max_batch_size)
    key = cache_key(model, buckets)
    memo = json.dumps(key, sort_keys=True)
    decision = load_cached(cache_dir, key) or _THIS_PROCESS.get(memo)
    if decision is None:
        start = time.perf_counter()
        try:
            timings = time_buckets(model_stepper(model, layers), buckets, budget_s)
        except (RuntimeError, ValueError, TypeError, AttributeError) as exc:  # an architecture it can't step
            unroute(layers)
            log.warning("kernel timing failed (%s: %s); F.linear everywhere", type(exc).__name__, exc)
            return Decision((False,) * len(ROW_BUCKETS), (), 0.0, "timing failed")
        decision = decide(timings, time.perf_counter() - start, complete=len(timings) == len(buckets))
        if decision.reliable:
            save(cache_dir, key, decision)
        else:
            _THIS_PROCESS[memo] = decision
            log.info("kernel timing cut short or noisy (another load on the CPU?): not cached on disk")
    if any(decision.onednn_rows):
        route(layers, decision.onednn_rows)
    else:
        unroute(layers)
    return decision
