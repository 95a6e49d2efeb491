"""Engine fixtures: the embedded model loaded once, in-process, in float32 on the CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from server.config import Settings
from server.engine.request import GenerationParams, GenerationRequest
from server.engine.runner import ModelRunner
from server.engine.scheduler import Scheduler
from server.model import loader
from tests.conftest import MODEL_DIR


@pytest.fixture(scope="session")
def loaded() -> loader.LoadedModel:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} is missing: run `make model` (make test does)")
    return loader.load(Settings(model_path=str(MODEL_DIR), torch_dtype="float32", device_map="cpu"))


@pytest.fixture
def make_scheduler(loaded: loader.LoadedModel) -> Iterator[Callable[..., Scheduler]]:
    """Start schedulers with the given settings; stop them when the test ends."""
    started: list[Scheduler] = []

    def make(**kwargs) -> Scheduler:
        paths: list[str] = []
        kwargs.setdefault("on_path", paths.append)
        sched = Scheduler(ModelRunner(loaded), **kwargs)
        sched.paths = paths  # type: ignore[attr-defined]
        sched.start()
        started.append(sched)
        return sched

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
