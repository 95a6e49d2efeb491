"""Engine fixtures: the embedded model loaded once, in-process, in float32 on the CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from server.engine.loop import EngineLoop
from server.engine.request import GenerationRequest
from server.model import loader
from tests.support.engine import build_loop, embedded_settings
from tests.support.servers import MODEL_DIR


@pytest.fixture(scope="session")
def loaded() -> loader.LoadedModel:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} is missing: run `make model` (make test does)")
    return loader.load(embedded_settings())


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


