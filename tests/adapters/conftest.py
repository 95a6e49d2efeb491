"""Adapter test fixtures: engines with adapters (in-process, the embedded model in float32 on the
CPU) and a reference: peft's PeftModel running one adapter alone with `generate`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.engine.engine import Engine
from tests.support.adapters import Reference
from tests.support.engine import embedded_settings


@pytest.fixture
def start_engine() -> Iterator[Callable[..., Engine]]:
    """Start engines with the given settings (model on the CPU in float32, the tests' pinned
    CPU_LINEAR); drained at the end.
    Kaito's strengths come as `adapter_strengths={name: value}` (load_settings reads them)."""
    engines: list[Engine] = []

    def start(**settings: Any) -> Engine:
        engine = Engine(embedded_settings(**settings))
        engine.start(background=False)
        assert engine.loop is not None, engine.load_error
        engines.append(engine)
        return engine

    yield start
    for e in engines:
        e.drain(30)


@pytest.fixture
def start_engine_raw() -> Iterator[Callable[..., Engine]]:
    """Like `start_engine`, but the engine may fail to load (its `load_error` says why)."""
    engines: list[Engine] = []

    def start(**settings: Any) -> Engine:
        engine = Engine(embedded_settings(**settings))
        engine.start(background=False)
        engines.append(engine)
        return engine

    yield start
    for e in engines:
        e.drain(30)


@pytest.fixture(scope="session")
def reference(adapters_dir: Path) -> Reference:
    return Reference(adapters_dir)


