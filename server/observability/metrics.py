"""Metrics: Prometheus series (prometheus_client) and Kaito's JSON system metrics."""

from __future__ import annotations

import contextvars
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

REGISTRY = CollectorRegistry()

# The adapter an HTTP request's generation runs with, as a metrics label: "base", "combined", an
# adapter's name, "merged" (any LoRAX merged_adapters recipe), "-" before any generation (or refused).
# Engine.submit sets it on the HTTP thread; the access log resets it per request. Only loaded
# adapters' names appear, so a client cannot grow the series by naming adapters.
ADAPTER: contextvars.ContextVar[str] = contextvars.ContextVar("inferbox_adapter", default="-")
REQUESTS = Counter("inferbox_requests", "HTTP requests by endpoint, status and adapter",
                   ["endpoint", "status", "adapter"], registry=REGISTRY)
TOKENS_IN = Counter("inferbox_prompt_tokens", "Prompt tokens processed, by adapter", ["adapter"],
                    registry=REGISTRY)
TOKENS_OUT = Counter("inferbox_generated_tokens", "Tokens generated, by adapter", ["adapter"],
                     registry=REGISTRY)
QUEUE_DEPTH = Gauge("inferbox_queue_depth", "Requests waiting for the engine", registry=REGISTRY)
BATCH_SIZE = Gauge("inferbox_running_batch_size", "Requests in the running batch", registry=REGISTRY)
ENGINE_PATH = Counter("inferbox_engine_path",
                      "Requests by engine path: batched (continuous batching) or exact (model.generate)",
                      ["path"], registry=REGISTRY)
for _path in ("batched", "exact"):  # export both series from the start, at zero
    ENGINE_PATH.labels(path=_path)
STEPS = Counter("inferbox_engine_steps", "Batched forward passes: prefill (admits new rows), decode, or "
                "predict (a model handler's batch: embeddings, MosaicML handlers)",
                ["kind"], registry=REGISTRY)
STEP_ROWS = Counter("inferbox_engine_step_rows", "Rows processed by batched forward passes (divide by "
                    "inferbox_engine_steps_total for the mean batch size)", ["kind"], registry=REGISTRY)
STEP_SECONDS = Counter("inferbox_engine_step_seconds", "Time spent in batched forward passes, including "
                       "token choice (divide by wall time for the engine's busy fraction)", ["kind"],
                       registry=REGISTRY)
for _kind in ("prefill", "decode", "predict"):
    for _series in (STEPS, STEP_ROWS, STEP_SECONDS):
        _series.labels(kind=_kind)
LATENCY = Histogram("inferbox_request_latency_seconds", "Request latency by endpoint", ["endpoint"],
                    registry=REGISTRY,
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
TTFT = Histogram("inferbox_time_to_first_token_seconds", "Time to first token", registry=REGISTRY,
                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))

CONSTRAINED = Counter("inferbox_constrained_requests", "Requests with an output constraint, by kind: "
                      "json_schema, json_object, regex, choice, grammar or tools", ["kind"],
                      registry=REGISTRY)
MASK_SECONDS = Histogram("inferbox_constraint_mask_seconds", "Time per step spent on output-constraint "
                         "masks (filling, applying, advancing) for all of the step's constrained rows",
                         registry=REGISTRY,
                         buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1))
MASK_ROWS = Counter("inferbox_constraint_mask_rows", "Constrained rows masked (divide by "
                    "inferbox_constraint_mask_seconds_count for the mean per step)", registry=REGISTRY)
DRAFTED = Counter("inferbox_speculative_drafted_tokens", "Tokens proposed by prompt-lookup drafts "
                  "(speculative decoding)", registry=REGISTRY)
ACCEPTED = Counter("inferbox_speculative_accepted_tokens", "Drafted tokens the model's own greedy choice "
                   "confirmed (divide by drafted for the acceptance rate)", registry=REGISTRY)
BROADCAST_SECONDS = Histogram("inferbox_tensor_parallel_broadcast_seconds", "Time rank 0 spends sending "
                              "each engine message to the other tensor-parallel ranks (one per forward, "
                              "plus one per step of an exact generate call)", registry=REGISTRY,
                              buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05))
LOADED_ADAPTERS = Gauge("inferbox_loaded_adapters", "LoRA adapters loaded in the model (named adapters, "
                        "`combined` and cached merges)", registry=REGISTRY)
INFLIGHT = Gauge("inferbox_inflight_requests", "HTTP requests in flight (streams until their last byte)",
                 registry=REGISTRY)
DRAINING = Gauge("inferbox_draining", "1 while the server drains after SIGTERM", registry=REGISTRY)
MODEL = Info("inferbox_model", "The served model: name and weight quantization (QUANTIZATION)",
             registry=REGISTRY)
WEIGHT_BYTES = Gauge("inferbox_model_weight_bytes", "Bytes of the model's weights as stored (quantized "
                     "weights count their int8/int4 data and scales); 0 until loaded", registry=REGISTRY)


def record_mask(rows: int, seconds: float) -> None:
    MASK_SECONDS.observe(seconds)
    MASK_ROWS.inc(rows)


def record_draft(drafted: int, accepted: int) -> None:
    DRAFTED.inc(drafted)
    ACCEPTED.inc(accepted)


def describe_model(name: str, quantization: str) -> None:
    MODEL.info({"model": name, "quantization": quantization})


def record_ttft(seconds: float) -> None:
    TTFT.observe(max(0.0, seconds))


def record_step(kind: str, rows: int, seconds: float) -> None:
    STEPS.labels(kind=kind).inc()
    STEP_ROWS.labels(kind=kind).inc(rows)
    STEP_SECONDS.labels(kind=kind).inc(seconds)


def record_tokens(prompt_tokens: int, generated_tokens: int, adapter: str | None = None) -> None:
    """Count tokens under `adapter` (default: the one this HTTP request's generation used)."""
    label = adapter or ADAPTER.get()
    TOKENS_IN.labels(adapter=label).inc(prompt_tokens)
    TOKENS_OUT.labels(adapter=label).inc(generated_tokens)


def wants_prometheus(accept: str) -> bool:
    """A Prometheus scraper asks for text/plain or OpenMetrics; browsers and Kaito's clients get JSON."""
    accept = accept.lower()
    return "application/openmetrics-text" in accept or (
        "text/plain" in accept and "application/json" not in accept.split(",")[0]
    )


def prometheus_exposition(accept: str) -> tuple[bytes, str]:
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type


def _gb(n: float) -> str:
    return f"{n / 1024**3:.2f} GB"


def kaito_system_metrics(model_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Kaito's `/metrics` JSON: GPU info when CUDA is available, CPU info otherwise; `model_info`
    (an inferbox addition: name, dtype, quantization, weight bytes) when given."""
    extra = {"model_info": model_info} if model_info is not None else {}
    return {**_system_metrics(), **extra}


def _system_metrics() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            try:
                load = f"{torch.cuda.utilization(i):.2f}%"
            except Exception:  # needs pynvml; report unknown rather than fail
                load = "unknown"
            try:
                temp = f"{torch.cuda.temperature(i)} C"
            except Exception:
                temp = "unknown"
            gpus.append({
                "id": str(i),
                "name": torch.cuda.get_device_name(i),
                "load": load,
                "temperature": temp,
                "memory": {"used": _gb(total - free), "total": _gb(total)},
            })
        return {"gpu_info": gpus, "cpu_info": None}
    mem = psutil.virtual_memory()
    return {
        "gpu_info": None,
        "cpu_info": {
            "load_percentage": psutil.cpu_percent(interval=None),
            "physical_cores": psutil.cpu_count(logical=False),
            "total_cores": psutil.cpu_count(logical=True),
            "memory": {"used": _gb(mem.used), "total": _gb(mem.total)},
        },
    }
