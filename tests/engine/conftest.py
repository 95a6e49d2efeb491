"""Engine fixtures: the embedded model loaded once, in-process, in float32 on the CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from server.config import Settings
from server.engine.constraint_mask import MaskApplier
from server.engine.loop import EngineLoop
from server.engine.policy import Policy, PolicyLimits
from server.engine.request import GenerationParams, GenerationRequest
from server.engine.runner import ModelRunner
from server.engine.stops import StopChecker
from server.model import loader
from tests.conftest import MODEL_DIR


@pytest.fixture(scope="session")
def loaded() -> loader.LoadedModel:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} is missing: run `make model` (make test does)")
    return loader.load(Settings(model_path=str(MODEL_DIR), torch_dtype="float32", device_map="cpu"))


def build_loop(loaded: loader.LoadedModel, window_s: float = 0.005, batching: bool | None = None,
               masks: MaskApplier | None = None, **limits) -> EngineLoop:
    """An engine loop (not started) on the loaded model; `loop.paths` records each request's path.
    `masks` applies output constraints (tests/engine/test_constraints.py)."""
    paths: list[str] = []
    runner = ModelRunner(loaded, masks)
    if batching is None:
        batching = runner.supports_batching()[0]
    policy = Policy(PolicyLimits(**limits), batching=batching, on_path=paths.append,
                    stop_checker=lambda p: StopChecker(loaded.tokenizer, p.stop))
    loop = EngineLoop(policy, runner, window_s=window_s)
    loop.paths = paths  # type: ignore[attr-defined]
    return loop


@pytest.fixture
def make_loop(loaded: loader.LoadedModel) -> Iterator[Callable[..., EngineLoop]]:
    """Start engine loops with the given settings; stop them when the test ends."""
    started: list[EngineLoop] = []

    def make(queued: list[GenerationRequest] = (), **kwargs) -> EngineLoop:
        """`queued` wait in the queue before the loop starts: they arrive as one deterministic group."""
        loop = build_loop(loaded, **kwargs)
        for r in queued:
            loop.policy.add(r)
        loop.start()
        started.append(loop)
        return loop

    yield make
    for s in started:
        s.stop(30)


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
