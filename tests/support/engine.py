"""Engine helpers: loops on a loaded model, requests, and the reference (bare `generate` alone)."""

from __future__ import annotations

from typing import Any

import torch

from server.config import Settings
from server.engine.constraint_mask import MaskApplier
from server.engine.loop import EngineLoop
from server.engine.policy import Policy, PolicyLimits
from server.engine.request import GenerationParams, GenerationRequest
from server.engine.runner import ModelRunner
from server.engine.stops import StopChecker
from server.model import loader
from tests.support.servers import CPU_LINEAR, MODEL_DIR


def embedded_settings(**overrides: Any) -> Settings:
    """The in-process engines' settings: the embedded model in float32 on the CPU, with the tests'
    pinned CPU kernel (`CPU_LINEAR`), then `overrides`."""
    return Settings(**{"model_path": str(MODEL_DIR), "torch_dtype": "float32", "device_map": "cpu",
                       "cpu_linear": CPU_LINEAR, **overrides})


def build_loop(loaded: loader.LoadedModel, window_s: float = 0.005, batching: bool | None = None,
               masks: MaskApplier | None = None, **limits) -> EngineLoop:
    """An engine loop (not started) on the loaded model; `loop.paths` records each request's path.
    `masks` applies output constraints (tests/engine/test_constraints.py)."""
    paths: list[str] = []
    runner = ModelRunner(loaded, masks)
    if batching is None:
        batching = runner.supports_batching()[0]
    policy = Policy(PolicyLimits(**limits), batching=batching, on_path=paths.append,
                    text_checker=lambda r: StopChecker(loaded.tokenizer, r.params.stop, r.text_options))
    loop = EngineLoop(policy, runner, window_s=window_s)
    loop.paths = paths  # type: ignore[attr-defined]
    return loop


def params(loaded: loader.LoadedModel, **kw) -> GenerationParams:
    kw.setdefault("eos_token_ids", loaded.eos_token_ids)
    kw.setdefault("pad_token_id", loaded.pad_token_id)
    return GenerationParams(**kw)


def request(loaded: loader.LoadedModel, prompt: str, **kw) -> GenerationRequest:
    return GenerationRequest(list(loaded.tokenizer(prompt)["input_ids"]), params(loaded, **kw))


def generate_alone(loaded: loader.LoadedModel, req: GenerationRequest, **extra) -> list[int]:
    """Bare `model.generate` on one request, unpadded: the reference."""
    p = req.params
    ids = torch.tensor([req.input_ids])
    kw = dict(max_new_tokens=p.max_new_tokens, min_new_tokens=p.min_new_tokens or None, do_sample=False,
              eos_token_id=list(p.eos_token_ids), pad_token_id=loaded.pad_token_id,
              repetition_penalty=p.repetition_penalty, no_repeat_ngram_size=p.no_repeat_ngram_size)
    kw.update(extra)
    with torch.inference_mode():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    return out[0, ids.shape[1]:].tolist()
