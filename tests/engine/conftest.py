"""Engine fixtures: the embedded model loaded once, in-process, in float32 on the CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from server.config import Settings
from server.engine.loop import EngineLoop
from server.engine.request import GenerationRequest
from server.model import loader
from tests.support.engine import build_loop
from tests.support.servers import CPU_LINEAR, MODEL_DIR


@pytest.fixture(scope="session")
def loaded() -> loader.LoadedModel:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} is missing: run `make model` (make test does)")
    return loader.load(Settings(model_path=str(MODEL_DIR), torch_dtype="float32", device_map="cpu",
                                cpu_linear=CPU_LINEAR))


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


