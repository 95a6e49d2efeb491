"""Shared fixtures: the real server (gunicorn, a free port, the embedded model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import MODEL_DIR, ServerProcess, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for the whole session (read-only use: tests must not stop it)."""
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} is missing: run `make model` (make test does)")
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.url


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ADAPTERS_DIR with three real peft LoRA adapters for the embedded model, as Kaito mounts
    them: `adapter1` (rank 4), `adapter2` (rank 4), `adapter3` (rank 8), seeded, q_proj/v_proj."""
    from tools.adapters import make_adapters

    root = tmp_path_factory.mktemp("adapters")
    make_adapters(MODEL_DIR, root, n=3)
    return root


@pytest.fixture(scope="session")
def foreign_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapters trained for other base models: `shape` (a narrower llama) and `modules` (GPT-2's
    module names); each folder is complete and valid for its own base."""
    from tools.adapters import make_foreign_adapters

    return make_foreign_adapters(tmp_path_factory.mktemp("foreign-adapters"))
